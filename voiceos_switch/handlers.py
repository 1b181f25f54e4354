"""The user's event handlers, run off the turn loop.

A handler that awaits ``call.say(...)`` or a slow lookup must never stop the
call's listening: each call gets one runner task that calls its handlers in
the order the events happened, while the turn loop goes on. Posting never
blocks; a runner that falls far behind drops the oldest events (counted and
logged) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from . import log

logger = log.get(__name__)

Handler = Callable[..., Awaitable[Any] | Any]

#: events waiting for a call's handlers at most
MAX_PENDING = 1000


class HandlerRunner:
    """One call's handlers, called in order on a task of their own."""

    def __init__(self, handlers: Mapping[str, Sequence[Handler]]) -> None:
        self.handlers = handlers
        self._pending: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.errors = 0

    def post(self, event: str, *args: Any) -> None:
        if not self.handlers.get(event):
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                logger.warning(log.kv(event="handler_events_dropped", dropped=self.dropped))
        self._pending.append((event, args))
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                event, args = self._pending.popleft()
                for handler in self.handlers.get(event, ()):
                    try:
                        result = handler(*_fit(handler, args))
                        if inspect.isawaitable(result):
                            await result
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        self.errors += 1
                        logger.exception(log.kv(event="handler_error", handler=event))
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every posted event was handled (True), at most ``timeout``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _fit(handler: Handler, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """As many of the event's arguments as the handler takes: a handler for
    ``escalation_requested`` may take ``(call)`` or ``(call, source)``."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return args
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return args
    n = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return args[:n]

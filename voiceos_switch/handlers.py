"""The user's event handlers, as one subscriber of the call's event bus.

A handler that awaits ``call.say(...)`` or a slow lookup must never stop
the call's listening: the bus runs this subscriber on a task of its own,
handlers in the order the events happened, while the turn loop goes on
(``events.py``: a subscriber that falls far behind drops its oldest events,
counted and logged, instead of growing without bound).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from . import events as ev
from . import log
from .call import Call, Turn

logger = log.get(__name__)

Handler = Callable[..., Awaitable[Any] | Any]


def sdk_arguments(call: Call, event: ev.Event) -> tuple[str, tuple[Any, ...]] | None:
    """The SDK's name for an event and the arguments its handlers get."""
    if isinstance(event, ev.CallStarted):
        return "call_started", (call,)
    if isinstance(event, ev.CallEnded):
        return "call_ended", (call,)
    if isinstance(event, ev.Dtmf):
        return "dtmf", (call, event.digit)
    if isinstance(event, ev.Transcript):
        turn = Turn(event.role, event.text, event.started_at, event.ended_at)
        turn.interrupted, turn.planned_text = event.interrupted, event.planned_text
        return "transcript", (call, turn)
    if isinstance(event, ev.EmotionDetected):
        return "emotion_detected", (call, event.emotion)
    if isinstance(event, ev.EscalationRequested):
        return "escalation_requested", (call, event.source)
    return None


def handler_subscriber(
    handlers: Mapping[str, Sequence[Handler]], call: Call
) -> Callable[[ev.Event], Awaitable[None]]:
    """The subscriber that calls the agent's handlers for ``call``."""

    async def deliver(event: ev.Event) -> None:
        named = sdk_arguments(call, event)
        if named is None:
            return
        name, args = named
        for handler in handlers.get(name, ()):
            try:
                result = handler(*_fit(handler, args))
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one handler's fault is logged; the others still run
                logger.exception(log.kv(event="handler_error", handler=name))

    return deliver


@functools.lru_cache(maxsize=1024)
def _arity(handler: Handler) -> int | None:
    """How many positional arguments ``handler`` takes (None: any number).
    Read once per handler, not once per event."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _fit(handler: Handler, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """As many of the event's arguments as the handler takes: a handler for
    ``escalation_requested`` may take ``(call)`` or ``(call, source)``."""
    try:
        n = _arity(handler)
    except TypeError:  # not hashable: read it each time
        n = _arity.__wrapped__(handler)
    return args if n is None else args[:n]

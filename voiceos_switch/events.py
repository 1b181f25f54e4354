"""One typed event bus per call.

What happens on a call is published as frozen dataclasses (below) on the
call's :class:`EventBus`. Publishing never blocks and never waits for a
subscriber: each subscriber has its own bounded queue and its own task,
handled in order; one that falls behind loses its oldest events (counted
in :attr:`Subscription.dropped`, logged) and the call goes on. The SDK's
handlers, the built-in behaviours (the hand-off when a caller asks for a
person), the metrics and any live viewer are subscribers alike.

Events carry plain data (text, numbers, the call's id) so they can leave
the process as they are; :func:`as_dict` gives their JSON form.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from . import log

logger = log.get(__name__)

#: events a subscriber may have waiting at most
MAX_PENDING = 1000
#: events lost by slow subscribers are logged this often at most (for the process)
WARN_EVERY_S = 10.0


@dataclass(frozen=True)
class Event:
    call_id: str
    #: wall-clock time it happened (seconds since the epoch)
    at: float = field(default_factory=time.time, kw_only=True)
    kind: ClassVar[str] = "event"


@dataclass(frozen=True)
class CallStarted(Event):
    pbx: str
    caller: str = ""
    called: str = ""
    sample_rate: int = 8000
    #: the A/B variant of the agent the call got
    variant: str | None = None
    kind: ClassVar[str] = "call_started"


@dataclass(frozen=True)
class AudioEnded(Event):
    """The call's audio stopped (``reason``: who ended it). Its record is
    written next; ``call_ended`` follows once it is on disk."""

    reason: str
    kind: ClassVar[str] = "media_ended"


@dataclass(frozen=True)
class CallEnded(Event):
    reason: str
    duration_s: float
    transferred_to: str | None = None
    kind: ClassVar[str] = "call_ended"


@dataclass(frozen=True)
class CallerSpeechStarted(Event):
    turn: int
    kind: ClassVar[str] = "caller_speech_started"


@dataclass(frozen=True)
class BargeInPaused(Event):
    """A voice over the agent: what it was saying is paused."""

    speaking: str  # what was paused: "reply", "greeting", "say", ...
    kind: ClassVar[str] = "barge_in_paused"


@dataclass(frozen=True)
class BargeInResolved(Event):
    """What that voice was: ``interrupted`` (the agent stopped),
    ``backchannel``, ``echo`` or ``no words`` (it went on)."""

    outcome: str
    kind: ClassVar[str] = "barge_in_resolved"


@dataclass(frozen=True)
class PartialTranscript(Event):
    """The caller paused: their words so far."""

    turn: int
    text: str
    kind: ClassVar[str] = "partial_transcript"


@dataclass(frozen=True)
class Transcript(Event):
    """A line of the transcript, final: the caller's turn, or the agent's
    (``text`` as heard; ``planned_text`` what it meant to say when cut)."""

    role: str
    text: str
    started_at: float
    ended_at: float | None = None
    interrupted: bool = False
    planned_text: str | None = None
    kind: ClassVar[str] = "transcript"


@dataclass(frozen=True)
class ToolCalled(Event):
    name: str
    arguments: str
    result: str
    kind: ClassVar[str] = "tool_called"


#: a turn's latency marks, in the order the turn goes through them
TURN_STAGES = (
    "endpoint",
    "confirmed",
    "stt_final",
    "llm_first_token",
    "tts_first_audio",
    "first_frame_sent",
)


@dataclass(frozen=True)
class TurnLatency(Event):
    """One agent turn's latency marks, milliseconds after the caller's last
    word (None: the stage did not happen), and how it was answered."""

    index: int
    marks_ms: dict[str, float | None]
    answer: str = ""
    endpoint_reason: str = ""
    preemptive: bool = False
    interrupted: bool = False
    #: the caller's last word, wall-clock (the marks count from it)
    speech_end_at: float | None = None
    kind: ClassVar[str] = "turn_latency"


@dataclass(frozen=True)
class EmotionDetected(Event):
    """``emotion``: the :class:`voiceos_switch.Emotion` announced."""

    emotion: Any
    kind: ClassVar[str] = "emotion_detected"


@dataclass(frozen=True)
class EmotionRead(Event):
    """How the caller sounded in one finished utterance: the four scores
    (0..1), however low, and the states it announced (if any)."""

    turn: int
    t: float  # seconds into the call
    scores: dict[str, float]
    confidence: float
    announced: list[str] = field(default_factory=list)
    kind: ClassVar[str] = "emotion_read"


@dataclass(frozen=True)
class EscalationRequested(Event):
    source: str  # "keypad", "speech", "emotion", "model"
    kind: ClassVar[str] = "escalation_requested"


@dataclass(frozen=True)
class Transferred(Event):
    target: str
    kind: ClassVar[str] = "transferred"


@dataclass(frozen=True)
class Dtmf(Event):
    digit: str
    kind: ClassVar[str] = "dtmf"


@dataclass(frozen=True)
class ProviderFallback(Event):
    """A model failed or stalled in this call and the next of its chain took
    over: ``stage`` is ``llm``, ``stt`` or ``tts``."""

    stage: str
    provider: str
    error: str
    next: str
    kind: ClassVar[str] = "provider_fallback"


#: the call whose work runs in this context: its id and its publisher. The
#: providers are shared by every call; what they report goes to the call
#: that asked (each call's tasks inherit it from the call's own task).
_current_call: ContextVar[tuple[str, Callable[[Event], None]] | None] = ContextVar(
    "voiceos_current_call", default=None
)


def bind_call(call_id: str, publish: Callable[[Event], None]) -> None:
    """Events reported from here on in this task (and the tasks it starts)
    are the call's."""
    _current_call.set((call_id, publish))


def report(make: Callable[[str], Event]) -> None:
    """``make(call_id)`` published on the call this work is for (nothing
    outside a call)."""
    current = _current_call.get()
    if current is not None:
        call_id, publish = current
        publish(make(call_id))


def as_dict(event: Event) -> dict[str, Any]:
    """The event's JSON form, with its ``kind``."""
    out: dict[str, Any] = {"kind": event.kind}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = value.as_dict() if hasattr(value, "as_dict") else dataclasses.asdict(value)
        out[f.name] = value
    return out


Subscriber = Callable[[Event], Awaitable[Any] | Any]


class _Behind:
    """Lost events, logged for the whole process at most once in
    WARN_EVERY_S: a log line per subscriber would itself stall the loop
    when many calls' viewers fall behind at once."""

    def __init__(self) -> None:
        self.warn_at = 0.0
        self.lost = 0
        self.names: set[str] = set()

    def note(self, name: str) -> None:
        self.lost += 1
        self.names.add(name)
        now = time.monotonic()
        if now >= self.warn_at:
            self.warn_at = now + WARN_EVERY_S
            logger.warning(
                log.kv(
                    event="subscribers_behind",
                    lost=self.lost,
                    subscribers=",".join(sorted(self.names)[:5]),
                )
            )
            self.lost = 0
            self.names.clear()


_behind = _Behind()


class Subscription:
    """One subscriber's queue and task."""

    def __init__(self, name: str, fn: Subscriber, maxsize: int) -> None:
        self.name = name
        self.fn = fn
        self.maxsize = maxsize
        self._pending: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.errors = 0
        self.handled = 0

    def offer(self, event: Event) -> None:
        if len(self._pending) >= self.maxsize:
            self._pending.popleft()
            self.dropped += 1
            _behind.note(self.name)
        self._pending.append(event)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                event = self._pending.popleft()
                try:
                    result = self.fn(event)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.errors += 1
                    logger.exception(
                        log.kv(event="subscriber_error", subscriber=self.name, on=event.kind)
                    )
                self.handled += 1
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
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


class EventBus:
    """One call's events; ``publish`` returns at once."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.subscriptions: list[Subscription] = []
        self.published = 0

    def subscribe(self, fn: Subscriber, name: str = "", maxsize: int = MAX_PENDING) -> Subscription:
        sub = Subscription(name or getattr(fn, "__name__", "subscriber"), fn, maxsize)
        self.subscriptions.append(sub)
        return sub

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self.subscriptions:
            sub.offer(event)

    async def drain(self, timeout: float) -> bool:
        """Until every subscriber has handled what was published (True), at
        most ``timeout`` seconds for all of them."""
        deadline = time.monotonic() + timeout
        ok = True
        for sub in self.subscriptions:
            ok = await sub.drain(max(0.0, deadline - time.monotonic())) and ok
        return ok

    async def close(self) -> None:
        for sub in self.subscriptions:
            await sub.close()

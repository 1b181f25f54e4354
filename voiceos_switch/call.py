"""A live call as the agent's code sees it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import log
from .audio.pacer import Playout
from .events import EscalationRequested, Event, EventBus, Transcript
from .media import CallMedia
from .speech import SpeechHandle, heard_prefix

logger = log.get(__name__)


class TTS(Protocol):
    name: str

    def stream(self, text: str, sample_rate: int) -> Any: ...


@dataclass
class Turn:
    """One thing said on the call. ``text`` is what was heard when interrupted."""

    role: str
    text: str
    started_at: float
    ended_at: float | None = None
    interrupted: bool = False
    planned_text: str | None = None


@dataclass
class Usage:
    """What the call consumed from the providers, for the cost per minute.
    LLM tokens are the provider's count where it reports one, otherwise
    estimated at four characters a token."""

    stt_seconds: float = 0.0
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    tts_chars: int = 0

    @staticmethod
    def tokens(text: str) -> int:
        return max(1, round(len(text) / 4)) if text else 0


@dataclass
class ReviewFlag:
    reason: str
    at: float = field(default_factory=time.time)


class Call:
    """One call. Its events go to :attr:`bus` (the agent's handlers, the
    metrics and any viewer subscribe there; publishing never blocks)."""

    def __init__(
        self,
        media: CallMedia,
        tts: TTS,
        *,
        agent_name: str = "agent",
        bus: EventBus | None = None,
    ) -> None:
        self.media = media
        self._tts = tts
        self.agent_name = agent_name
        self.bus = bus if bus is not None else EventBus(media.call_id)
        self.id = media.call_id
        self.pbx = media.pbx
        self.caller = ""
        self.called = ""
        #: the PBX that carried the call (its AMI address), when known
        self.pbx_address = ""
        self.started_at = time.time()
        self.ended_at: float | None = None
        self.transcript: list[Turn] = []
        self.context: list[Any] = []
        self.review_flags: list[ReviewFlag] = []
        self.dtmf: list[str] = []
        self.transferred_to: str | None = None
        self.recordings: list[str] = []
        self.usage = Usage()
        self.tool_calls: list[dict[str, Any]] = []
        self.emotions: list[dict[str, Any]] = []
        self.end_reason = ""
        #: the A/B variant of the agent this call got (None: no variants)
        self.variant: str | None = None
        #: set while a conversation runs: speech then goes through its turn
        #: loop, so the caller can interrupt it like any reply
        self.speaker: Callable[[str], Awaitable[Turn]] | None = None
        self.silencer: Callable[[], int] | None = None
        #: set by the conversation: a request for a person cuts its reply
        self.escalator: Callable[[str], None] | None = None

    @property
    def sample_rate(self) -> int:
        return self.media.sample_rate

    @property
    def ended(self) -> bool:
        return self.media.ended

    # speaking ----------------------------------------------------------------
    async def say(self, text: str) -> Turn:
        """Speak ``text``; returns when it has been played or interrupted.

        Audio streams to the caller as the TTS produces it. If it is cut
        short (barge-in, :meth:`stop_speaking`, hangup), the turn records
        only the part the caller heard.
        """
        if self.speaker is not None:
            return await self.speaker(text)
        turn = Turn("agent", text, time.time())
        self.transcript.append(turn)
        handle = SpeechHandle(self.media, source="say")
        try:
            self.usage.tts_chars += len(text)
            handle.begin(text)
            async for chunk in self._tts.stream(text, self.media.sample_rate):
                if handle.ended or self.media.ended:
                    break
                handle.audio(chunk)
            handle.finish()
            complete = await handle.wait() and not self.media.ended
        except asyncio.CancelledError:
            handle.interrupt()
            self._finish_turn(turn, handle, False)
            raise
        self._finish_turn(turn, handle, complete)
        self.publish_turn(turn)
        return turn

    def _finish_turn(self, turn: Turn, handle: Any, complete: bool) -> None:
        turn.ended_at = time.time()
        if complete:
            return
        turn.interrupted = True
        turn.planned_text = turn.text
        turn.text = heard_prefix(turn.text, handle.heard_fraction)

    def stop_speaking(self) -> int:
        """Cut the agent's voice now (and what it was about to say); returns
        frames dropped."""
        if self.silencer is not None:
            return self.silencer()
        return self.media.clear()

    def play(self, pcm: bytes) -> Playout:
        """Queue raw PCM16 at the call's rate."""
        return self.media.send_audio(pcm)

    # control -------------------------------------------------------------
    async def hangup(self) -> None:
        await self.media.hangup()

    def inject_context(self, item: Any) -> None:
        """Add facts for the agent's next turn (text or any JSON-able value)."""
        self.context.append(item)

    def flag_for_review(self, reason: str = "flagged") -> None:
        self.review_flags.append(ReviewFlag(reason))
        logger.info(log.kv(event="flagged_for_review", reason=reason))

    def publish(self, event: Event) -> None:
        self.bus.publish(event)

    def publish_turn(self, turn: Turn) -> None:
        """A line of the transcript, final, as an event."""
        self.bus.publish(
            Transcript(
                self.id,
                turn.role,
                turn.text,
                turn.started_at,
                turn.ended_at,
                turn.interrupted,
                turn.planned_text,
            )
        )

    def request_person(self, source: str = "model") -> None:
        """The caller is to be handed to a person: ``escalation_requested``
        goes to the agent's handlers (or its own hand-off, without one)."""
        if self.escalator is not None:
            self.escalator(source)
        else:
            self.publish(EscalationRequested(self.id, source))

    def transcript_text(self) -> str:
        return "\n".join(f"{t.role}: {t.text}" for t in self.transcript if t.text)

    def add_caller_text(self, text: str) -> Turn:
        turn = Turn("caller", text, time.time(), time.time())
        self.transcript.append(turn)
        return turn


Handler = Callable[..., Awaitable[Any] | Any]

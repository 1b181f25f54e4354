"""The turn loop: listen, think, speak, be interrupted.

Listening (``listener.py``) and speaking (``speech.py``) are separate; this
module decides between them. Caller audio goes to the listener, which
reports cues, pauses with their transcript, and ends of turn. The reply is
speculated: when the caller pauses, the transcript of what they said is
already being decoded, and as soon as it is there the whole reply starts
(facts, model, tools without side effects, the first clause's voice) into a
*held* speech handle. When the end of the turn is confirmed the held audio
goes out on the next frame; if the caller goes on, it is dropped without a
sound and nothing of it reaches the history.

Barge-in is a separate, prioritised path: the first frames of a voice over
the agent pause its audio at once; the words decide (a backchannel or the
agent's own echo resumes it where it paused, anything else stops it and the
agent's message is trimmed to what was heard).

Every wait has a deadline on the injected clock, so no state can stick and
the timing logic runs the same on a virtual clock in tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import events as ev
from .. import log
from ..audio.clock import Clock, MonotonicClock, Timer
from ..audio.levels import level_db
from ..call import TTS, Call, Turn
from ..media import AudioIn, CallMedia, DtmfIn, MediaEnded, MediaEvent
from ..providers.emotion import Emotion, EmotionReader, Reading
from ..providers.llm import (
    LLM,
    LLMError,
    LLMSession,
    TextDelta,
    ToolCallRequest,
    open_session,
    route_tool,
)
from ..speech import SpeechHandle, SpeechState
from ..tools import Tool
from . import endpoint
from .chunker import SentenceChunker
from .emotion import ESCALATE as ESCALATE_ACTION
from .emotion import SLOW_DOWN, Trigger, line_of
from .intent import ESCALATE, intent_of
from .knowledge import Knowledge, Match, ungrounded
from .listener import (
    CueDropped,
    Hypothesis,
    Listener,
    ListenerConfig,
    ListenerEvent,
    NoTurn,
    Phase,
    Resumed,
    SpeechStarted,
    STTLike,
    TextTurnModel,
    TurnEnded,
    TurnModel,
    VADLike,
    VoiceCue,
)
from .speechcache import SpeechCache, clauses

logger = log.get(__name__)

BACKCHANNELS = frozenset(
    "uh-huh uh huh mm-hmm mhm mm hmm okay ok yeah yes yep right sure alright got it i see "
    "oh ah aha cool great".split()
)

VOICE_RULES = (
    "You are speaking on a phone call. Answer in one to three short sentences of plain "
    "spoken English. No lists, markup, emoji or URLs. Say numbers, dates and times the "
    "way a person would say them aloud. If you need facts you do not have, use a tool."
)

BRIEF_VOICE_RULES = "Reply in one or two short spoken sentences."

#: inbound events handed from the transport to the loop at most; beyond
#: them the transport's own bounded inbox holds (and drops) audio
INBOUND_HANDOVER = 50

#: no caller frame for this long is silence (DTX, silence suppression); a
#: shorter gap is a late frame that will still come
DTX_AFTER_S = 0.1
FRAME_S = 0.02

NOT_SURE = "I'm not sure about that. Is there something else I can help with?"
TROUBLE = "Sorry, I'm having trouble right now. Could you say that again?"


def system_message(prompt: str, small: bool) -> dict[str, Any]:
    """The agent's prompt with the rules for speaking on the phone (one
    short sentence of them for a small model, which follows a short prompt
    better). The same for every turn of a call, so the model's evaluated
    prompt carries over from turn to turn."""
    if small:
        return {"role": "system", "content": f"{prompt} {BRIEF_VOICE_RULES}"}
    return {"role": "system", "content": f"{VOICE_RULES}\n\n{prompt}"}


class TurnState(enum.Enum):
    """Where the conversation is. Each change is logged and kept in
    :attr:`Conversation.transitions`."""

    IDLE = "idle"  # nobody speaking, nothing pending
    LISTENING = "listening"  # the caller is speaking or pausing
    THINKING = "thinking"  # a turn ended; the reply is not audible yet
    SPEAKING = "speaking"  # the agent is audible
    PAUSED = "paused"  # the agent is paused: the caller may be interrupting
    ENDED = "ended"


@dataclass
class ConversationConfig:
    system_prompt: str = "You are a helpful phone agent."
    greeting: str | None = None
    style: str = "balanced"
    barge_in: bool = True
    backchannels: frozenset[str] = BACKCHANNELS
    reprompt_after_s: float = 8.0
    reprompts: int = 1
    reprompt_text: str = "Are you still there?"
    goodbye_text: str = "I'll let you go now. Goodbye."
    not_heard_text: str = "Sorry, I didn't catch that. Could you say it again?"
    max_utterance_s: float = 30.0
    tool_filler_after_s: float = 0.8
    tool_filler_text: str = "One moment while I check that."
    tool_timeout_s: float = 10.0
    llm_timeout_s: float = 8.0
    #: start the whole reply when the caller pauses, before the turn's end
    #: is confirmed (it is dropped without a sound if the caller goes on)
    speculate: bool = True
    max_tool_rounds: int = 3
    #: a fact this close in meaning to the caller's words is the answer
    fact_direct: float = 0.55
    #: a fact this close, and this far ahead of the next best, is given to
    #: the model as the line it needs (a small model, which invents, speaks
    #: the fact itself instead). Measured on the demo shop's facts (written
    #: as the questions they answer): small talk scores 0.27-0.40 with
    #: margins of 0.10 at most; its own questions 0.47 and up, and ones the
    #: recogniser got half wrong ("D cell tools") down to 0.33 with a margin
    #: of 0.13
    fact_relevant: float = 0.3
    fact_margin: float = 0.12
    #: a caller speaking over the agent this long without a pause to read
    #: their words gets them read anyway (the agent stays paused until then)
    barge_in_decide_s: float = 1.5
    #: history kept for a small model, in messages; trimmed in blocks so the
    #: prompt keeps extending the previous one between trims
    small_history: int = 8


@dataclass
class TurnMetrics:
    """Latency marks of one agent turn, as clock times (seconds)."""

    index: int
    caller_text: str = ""
    speech_end: float | None = None
    hypothesis: float | None = None
    endpoint: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    first_frame_sent: float | None = None
    #: when the turn loop took the end of the turn, and released the reply
    confirmed: float | None = None
    released: float | None = None
    interrupted: bool = False
    preemptive: bool = False
    answer: str = ""  # "fact", "model", "tool", "fallback"
    endpoint_reason: str = ""
    turn_p: float | None = None
    text_p: float | None = None
    tool_calls: list[str] = field(default_factory=list)

    def as_ms(self) -> dict[str, float | None]:
        base = self.speech_end
        marks = {
            "endpoint": self.endpoint,
            "confirmed": self.confirmed,
            "released": self.released,
            "stt_final": self.stt_final,
            "llm_first_token": self.llm_first_token,
            "tts_first_audio": self.tts_first_audio,
            "first_frame_sent": self.first_frame_sent,
        }
        return {
            k: (round((v - base) * 1000, 1) if v is not None and base is not None else None)
            for k, v in marks.items()
        }

    @property
    def response_ms(self) -> float | None:
        return self.as_ms()["first_frame_sent"]


@dataclass
class _Reply:
    """A reply being made for one caller turn (held until the turn is confirmed)."""

    turn: int
    text: str
    handle: SpeechHandle
    metrics: TurnMetrics
    #: the caller's message as the model sees it (with the fact it needs)
    user_content: str = ""
    planned: asyncio.Event = field(default_factory=asyncio.Event)
    #: how the caller sounded, and the emotions this turn announces (its
    #: triggers' lines lead the reply)
    reading: Reading | None = None
    announces: tuple[str, ...] = ()


@dataclass
class _BargeIn:
    """A voice over the agent (utterance ``turn``), its words not yet read.
    Whatever the agent is saying meanwhile is paused."""

    turn: int
    at_ms: float
    level_db: float = -96.0


class Conversation:
    """One call's conversation. ``await Conversation(...).run()`` until hangup."""

    def __init__(
        self,
        call: Call,
        media: CallMedia,
        *,
        stt: STTLike,
        llm: LLM,
        tts: TTS,
        tools: list[Tool],
        config: ConversationConfig,
        vad: VADLike | None = None,
        turn_model: TurnModel | None = None,
        text_turn: TextTurnModel | None = None,
        knowledge: Knowledge | None = None,
        clock: Clock | None = None,
        gate: Any = None,
        speech_cache: SpeechCache | None = None,
        emotion: EmotionReader | None = None,
        triggers: dict[str, Trigger] | None = None,
    ) -> None:
        self.call = call
        self.media = media
        self.stt, self.llm, self.tts = stt, llm, tts
        self.tools = {t.name: t for t in tools}
        self.config = config
        self.clock = clock or MonotonicClock()
        self.rate = media.sample_rate
        self.knowledge = knowledge or Knowledge([])
        #: the audio of fixed lines (facts, greeting, goodbye), shared by calls
        self.speech_cache = speech_cache if speech_cache is not None else SpeechCache()
        if vad is None:
            from ..providers.vad import VADStream

            vad = VADStream(self.rate)
        self.listener = Listener(
            self.rate,
            vad=vad,
            stt=stt,
            turn_model=turn_model,
            text_turn=text_turn,
            on_event=self._on_listener,
            config=ListenerConfig(
                style=endpoint.style(config.style), max_utterance_s=config.max_utterance_s
            ),
            gate=gate,
        )
        self.small = bool(getattr(llm, "small", False))
        self.session: LLMSession = open_session(llm)
        self.history: list[dict[str, Any]] = []
        self.metrics: list[TurnMetrics] = []
        self.state = TurnState.IDLE
        self.transitions: list[tuple[float, TurnState, str]] = []
        self.speaking: SpeechHandle | None = None
        self._queue: collections.deque[SpeechHandle] = collections.deque()
        self._spec: _Reply | None = None  # held, for the caller's current turn
        self._reply: _Reply | None = None  # confirmed, being made or played
        self._barge: _BargeIn | None = None
        self._last_caller_turn: Turn | None = None
        self._answered: _Reply | None = None  # the last turn's reply, heard or not
        self._context_seen = 0
        self._inbound: collections.deque[MediaEvent] = collections.deque()
        self._room = asyncio.Event()
        self._wake: asyncio.Future[None] | None = None
        self._timer: Timer | None = None
        self._last_frame_at = self.clock.now()
        self._last_activity = self.clock.now()
        self._audio_clock: collections.deque[tuple[float, float]] = collections.deque()
        self._reprompts_done = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._agent_said: collections.deque[str] = collections.deque(maxlen=6)
        self.false_barge_ins = 0
        self.barge_ins = 0
        self.echoes_ignored = 0
        self._ended = False
        #: the caller's emotion, read per utterance (None: not read)
        self.emotion = emotion
        self.triggers = triggers or {}
        if emotion is not None:
            self.call.emotions = emotion.timeline
        self._slowed = False
        media_watch = getattr(media, "monitor_output", None)
        if media_watch is not None:
            media_watch(self._agent_frame)

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        reader = asyncio.create_task(self._pump())
        self.call.speaker = self.say
        self.call.silencer = self.stop_speaking
        self.call.escalator = self._person_requested
        try:
            prefix = [self._system_message()]
            if self.config.greeting:
                prefix.append({"role": "assistant", "content": self.config.greeting})
            await self.session.prime(prefix)
            if self.config.greeting:
                self._enqueue(self._text_handle(self.config.greeting, "greeting"))
            while not self._ended:
                while self._inbound and not self._ended:
                    await self._handle(self._inbound.popleft())
                    self._room.set()
                if self._ended:
                    break
                await self._on_time()
                await self._sleep()
        finally:
            self._ended = True
            self._set_state(TurnState.ENDED, "media ended")
            self.call.speaker = None
            self.call.silencer = None
            self.call.escalator = None
            reader.cancel()
            for handle in self._all_handles():
                handle.interrupt()
            tasks = [reader, *self.listener.close(), *self._background]
            tasks += [h.task for h in self._all_handles() if h.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
            self.session.close()

    async def _pump(self) -> None:
        """Inbound events, in order, into a bounded hand-over to the loop: the
        transport's inbox (bounded) holds the rest while the loop is busy."""
        async for event in self.media.events():
            if len(self._inbound) >= INBOUND_HANDOVER:
                self._room.clear()
                await self._room.wait()
            self._inbound.append(event)
            self._poke()
            if isinstance(event, MediaEnded):
                return

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep(self) -> None:
        """Until an inbound event or the next deadline."""
        if self._inbound:
            return
        deadline = self._next_deadline()
        self._wake = asyncio.get_running_loop().create_future()
        if deadline is not None:
            self._timer = self.clock.call_at(deadline, self._poke)
        try:
            await self._wake
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._wake = None

    def _next_deadline(self) -> float | None:
        now = self.clock.now()
        deadlines: list[float] = []
        if self.listener.phase is Phase.PAUSED:
            deadlines.append(max(now, self._last_frame_at) + FRAME_S)  # a frame is due
        elif self.listener.phase is not Phase.QUIET:
            deadlines.append(self._last_frame_at + DTX_AFTER_S)  # frames stopped
        if self._barge is not None:
            deadlines.append(now + 0.1)
        if self._idle():
            deadlines.append(self._last_activity + self.config.reprompt_after_s)
        return min(deadlines) if deadlines else None

    async def _handle(self, event: MediaEvent) -> None:
        if isinstance(event, MediaEnded):
            self._ended = True
        elif isinstance(event, AudioIn):
            now = self.clock.now()
            self._last_frame_at = now
            self._audio_clock.append(
                (self.listener.audio_ms + len(event.pcm) / 2 / self.rate * 1000, now)
            )
            while len(self._audio_clock) > 1000:
                self._audio_clock.popleft()
            await self.listener.feed(event.pcm, now)
            if self.emotion is not None:
                self.emotion.follow(
                    event.pcm, self.listener.phase is not Phase.QUIET, self.listener.turn
                )
            took = self.clock.now() - now
            if took > 0.05:
                logger.warning(log.kv(event="listener_slow", ms=round(took * 1000)))
        elif isinstance(event, DtmfIn):
            self.call.dtmf.append(event.digit)
            self._last_activity = self.clock.now()
            self.call.publish(ev.Dtmf(self.call.id, event.digit))

    async def _on_time(self) -> None:
        now = self.clock.now()
        gap = now - self._last_frame_at
        if self.listener.phase is Phase.PAUSED and gap > FRAME_S:
            # the caller is pausing and no frame came: silence passes all the same
            self.listener.silent_for(gap * 1000)
        elif self.listener.phase is not Phase.QUIET and gap > DTX_AFTER_S:
            # the PBX stopped sending frames (DTX, silence suppression):
            # that is silence, as long as it lasts
            await self.listener.idle(gap, now)
            self._last_frame_at = now
        barge = self._barge
        if barge is not None:
            paused_ms = self.listener.audio_ms - barge.at_ms
            if paused_ms > self.config.barge_in_decide_s * 1000 and self.listener.phase in (
                Phase.SPEAKING,
                Phase.CUE,
            ):
                # a long voice over the agent with no pause: read it now
                self.listener.read_now()
        if self._idle() and now - self._last_activity >= self.config.reprompt_after_s:
            self._reprompt()

    def _idle(self) -> bool:
        return (
            self.speaking is None
            and not self._queue
            and self._reply is None
            and self._spec is None
            and self.listener.phase is Phase.QUIET
            and not self._ended
        )

    def _set_state(self, state: TurnState, why: str) -> None:
        if state is self.state:
            return
        self.state = state
        self.transitions.append((self.clock.now(), state, why))
        del self.transitions[:-500]
        logger.debug(log.kv(event="turn_state", state=state.value, why=why))

    def _refresh_state(self, why: str) -> None:
        if self._ended:
            return
        if self.speaking is not None and self.speaking.state is SpeechState.PAUSED:
            self._set_state(TurnState.PAUSED, why)
        elif self.speaking is not None and self.speaking.audible:
            self._set_state(TurnState.SPEAKING, why)
        elif self._reply is not None:
            self._set_state(TurnState.THINKING, why)
        elif self.listener.phase is not Phase.QUIET:
            self._set_state(TurnState.LISTENING, why)
        else:
            self._set_state(TurnState.IDLE, why)

    def _audio_to_clock(self, audio_ms: float) -> float:
        """The clock time the frame ending ``audio_ms`` into the stream arrived."""
        for end_ms, at in reversed(self._audio_clock):
            if end_ms <= audio_ms + 0.5:
                return at + (audio_ms - end_ms) / 1000
        return self._audio_clock[0][1] if self._audio_clock else self.clock.now()

    def _agent_frame(self, pcm: bytes, at: float) -> None:
        self.listener.echo.sent(at, level_db(pcm))

    # ----------------------------------------------------------- listening
    def _on_listener(self, event: ListenerEvent) -> None:
        if self._ended:
            return
        logger.debug(
            log.kv(
                event="listener",
                what=type(event).__name__,
                turn=getattr(event, "turn", self.listener.turn),
                audio_ms=round(self.listener.audio_ms),
                text=getattr(event, "text", ""),
                speaking=self.speaking.state.value if self.speaking else "-",
            )
        )
        if isinstance(event, VoiceCue | SpeechStarted):
            if isinstance(event, SpeechStarted):
                self.call.publish(ev.CallerSpeechStarted(self.call.id, self.listener.turn))
            self._caller_voice(event)
        elif isinstance(event, CueDropped):
            if self._barge is not None:
                self._resume_after_false_barge_in("no speech")
        elif isinstance(event, Hypothesis):
            self._on_hypothesis(event)
        elif isinstance(event, Resumed):
            if self._spec is not None and self._spec.turn == event.turn:
                self._drop_spec("the caller went on")
        elif isinstance(event, TurnEnded):
            self._on_turn_end(event)
        elif isinstance(event, NoTurn):
            if self._spec is not None and self._spec.turn == event.turn:
                self._drop_spec(event.why)
            if self._barge is not None and self._barge.turn == event.turn:
                self._resume_after_false_barge_in(event.why)
            elif event.why.startswith("recogniser failed") and self.speaking is None:
                # the caller said something and the agent could not hear it:
                # say so, rather than leave them in silence
                self._enqueue(self._text_handle(self.config.not_heard_text, "not heard"))
        self._last_activity = self.clock.now()
        self._refresh_state(type(event).__name__)

    def _caller_voice(self, event: VoiceCue | SpeechStarted) -> None:
        """A voice while the agent is (about to be) audible: pause it."""
        handle = self.speaking
        turn = self.listener.turn
        if not self.config.barge_in or handle is None or handle.ended:
            return
        if self._barge is not None and self._barge.turn == turn:
            return
        level = event.level_db if isinstance(event, VoiceCue) else -96.0
        self._barge = _BargeIn(turn, event.at_ms, level)
        handle.pause()
        self.call.publish(ev.BargeInPaused(self.call.id, handle.source))
        logger.info(log.kv(event="barge_in_pause", source=handle.source))

    def _on_hypothesis(self, hyp: Hypothesis) -> None:
        text = hyp.text
        if _has_words(text):
            self.call.publish(ev.PartialTranscript(self.call.id, hyp.turn, text))
        barge = self._barge
        if barge is not None and barge.turn == hyp.turn:
            if self._settle_barge_in(barge, text):
                return
        if not self.config.speculate or not _has_words(text):
            return
        if self._spec is not None:
            if self._spec.turn == hyp.turn and self._spec.text == text:
                return
            self._drop_spec("a newer transcript")
        if self.speaking is not None and self.speaking.audible:
            return  # over the agent: the words decide first (above)
        if self.listener.phase is not Phase.PAUSED:
            return  # read while the caller still talks: wait for their pause
        metrics = TurnMetrics(index=len(self.metrics) + 1, preemptive=True)
        metrics.speech_end = self._audio_to_clock(hyp.speech_end_ms)
        metrics.hypothesis = self.clock.now()
        metrics.stt_final = self.clock.now()
        handle = SpeechHandle(self.media, source="reply", held=True)
        reply = _Reply(hyp.turn, text, handle, metrics)
        self._read_emotion(reply, final=False)
        handle.on_first_frame = self._first_frame(metrics)
        self._spec = reply
        self._start_producing(reply)

    def _settle_barge_in(self, barge: _BargeIn, text: str) -> bool:
        """The words of a voice over the agent are known: is it an
        interruption? Returns True when the utterance is settled as none."""
        if not _has_words(text):
            return False
        if self._is_backchannel(text):
            self.listener.discard(barge.turn)
            self._resume_after_false_barge_in("backchannel")
            return True
        if self._is_echo(text):
            self.listener.discard(barge.turn)
            self.listener.echo.learn(barge.level_db, self.clock.now())
            self.echoes_ignored += 1
            self._resume_after_false_barge_in("the agent's own voice")
            return True
        self._confirm_barge_in()
        return False

    def _confirm_barge_in(self) -> None:
        self.barge_ins += 1
        self._barge = None
        self.call.publish(ev.BargeInResolved(self.call.id, "interrupted"))
        dropped = 0
        for handle in self._all_handles():
            if handle is not (self._spec.handle if self._spec else None):
                dropped += handle.interrupt()
        logger.info(log.kv(event="agent_interrupted", why="barge-in", frames_dropped=dropped))

    def _resume_after_false_barge_in(self, why: str) -> None:
        self._barge = None
        self.false_barge_ins += 1
        self.call.publish(ev.BargeInResolved(self.call.id, why))
        if self.speaking is not None:
            self.speaking.resume()
        logger.info(log.kv(event="barge_in_ignored", why=why))

    def _is_backchannel(self, text: str) -> bool:
        words = re.findall(r"[a-z'-]+", text.lower())
        return (
            bool(words)
            and len(words) <= 3
            and all(
                w in self.config.backchannels or w.replace("-", " ") in self.config.backchannels
                for w in words
            )
        )

    def _is_echo(self, text: str) -> bool:
        """Are these words the agent's own, coming back on the line?"""
        words = re.findall(r"[a-z']+", text.lower())
        if len(words) < 2:
            return False
        current = [h.planned_text for h in self._all_handles() if h.audible]
        said = set(re.findall(r"[a-z']+", " ".join([*self._agent_said, *current]).lower()))
        return sum(1 for w in words if w in said) >= 0.8 * len(words)

    def _drop_spec(self, why: str) -> None:
        spec, self._spec = self._spec, None
        if spec is not None:
            spec.handle.cancel()
            logger.debug(log.kv(event="speculation_dropped", why=why))

    # ----------------------------------------------------------- turn's end
    def _on_turn_end(self, ended: TurnEnded) -> None:
        text = ended.text
        barge = self._barge
        if barge is not None and barge.turn == ended.turn:
            if self._settle_barge_in(barge, text):
                return
            if self._barge is not None:  # no words after all
                self._resume_after_false_barge_in("no words")
                return
        self._last_activity = self.clock.now()
        self._reprompts_done = 0
        merged = self._merge_unanswered(ended)
        if merged is not None:
            text = merged
        spec = self._spec
        self._spec = None
        reading, announces = self._reading_of(ended.turn, text, final=True)
        if spec is not None and (
            spec.turn != ended.turn or spec.text != text or spec.announces != announces
        ):
            spec.handle.cancel()
            spec = None
        if spec is not None:
            reply = spec
            reply.reading = reading
        else:
            metrics = TurnMetrics(index=len(self.metrics) + 1)
            metrics.speech_end = self._audio_to_clock(ended.speech_end_ms)
            metrics.stt_final = self.clock.now()
            handle = SpeechHandle(self.media, source="reply", held=True)
            handle.on_first_frame = self._first_frame(metrics)
            reply = _Reply(ended.turn, text, handle, metrics, reading=reading, announces=announces)
            self._start_producing(reply)
        m = reply.metrics
        m.caller_text = text
        m.confirmed = self.clock.now()
        m.endpoint = self._audio_to_clock(ended.decided_ms)
        m.endpoint_reason = ended.reason
        m.turn_p = ended.turn_p
        m.text_p = ended.text_p
        self.call.usage.stt_seconds += ended.transcript.audio_s or ended.audio_s
        self.metrics.append(m)
        if merged is not None and self._last_caller_turn is not None:
            turn = self._last_caller_turn
            turn.text = text
        else:
            turn = self.call.add_caller_text(text)
        self._last_caller_turn = turn
        logger.info(
            log.kv(
                event="caller_turn",
                text=text,
                reason=ended.reason,
                turn_p=-1 if ended.turn_p is None else round(ended.turn_p, 2),
                text_p=-1 if ended.text_p is None else round(ended.text_p, 3),
                speculated=m.preemptive,
                merged=merged is not None,
            )
        )
        self.call.publish_turn(turn)
        actions = self._announce(reading)
        if self.call.transferred_to is not None or self.media.ended:
            reply.handle.cancel()  # the caller is with a person now
            return
        if intent_of(text) == ESCALATE:
            self._escalate(reply, "speech")
            return
        if ESCALATE_ACTION in actions:
            self._escalate(reply, "emotion")
            return
        if SLOW_DOWN in actions:
            self._slow_down()
        previous = self._reply
        if previous is not None and previous.handle is not reply.handle:
            previous.handle.interrupt()  # the caller spoke again before it was heard
        self._reply = reply
        self._answered = reply
        self._confirm(reply)

    def _escalate(self, reply: _Reply, source: str) -> None:
        """The caller asked for a person (``speech``), or an emotion's
        trigger says so (``emotion``): no answer of the agent's own; the
        agent's handlers (or its built-in hand-off) take the call."""
        reply.handle.cancel()
        previous = self._reply
        if previous is not None and previous.handle is not reply.handle:
            previous.handle.interrupt()
        self._reply = self._answered = None
        logger.info(log.kv(event="escalation_requested", source=source))
        self.call.publish(ev.EscalationRequested(self.call.id, source))

    def _person_requested(self, source: str) -> None:
        """``call.request_person`` (a tool, a handler): what the agent is
        saying or preparing stops; the hand-off takes over."""
        for handle in self._all_handles():
            handle.interrupt()
        self._reply = self._answered = None
        logger.info(log.kv(event="escalation_requested", source=source))
        self.call.publish(ev.EscalationRequested(self.call.id, source))

    # ------------------------------------------------------------- emotion
    def _reading_of(
        self, turn: int, text: str, final: bool
    ) -> tuple[Reading | None, tuple[str, ...]]:
        """How the caller sounded in utterance ``turn``, and the states it
        would announce that have a line to lead the reply."""
        if self.emotion is None:
            return None, ()
        try:
            reading = self.emotion.read(turn, text, final)
        except Exception as exc:  # noqa: BLE001 - a reading never costs the caller a reply
            logger.warning(log.kv(event="emotion_read_failed", error=repr(exc)))
            return None, ()
        said = tuple(
            s
            for s in self.emotion.would_announce(reading)
            if s in self.triggers and self.triggers[s].say is not None
        )
        return reading, said

    def _read_emotion(self, reply: _Reply, final: bool) -> None:
        reply.reading, reply.announces = self._reading_of(reply.turn, reply.text, final)

    def _announce(self, reading: Reading | None) -> set[str]:
        """The turn's reading into the call's timeline; each emotion it
        announces goes to the handlers. Returns the triggers' actions due."""
        if self.emotion is None or reading is None:
            return set()
        actions: set[str] = set()
        announced = self.emotion.commit(reading)
        row = self.emotion.last_entry
        if row is not None:
            self.call.publish(
                ev.EmotionRead(
                    self.call.id,
                    row["turn"],
                    row["t"],
                    dict(row["scores"]),
                    row["confidence"],
                    list(row["announced"]),
                )
            )
        for emotion in announced:
            self.call.publish(ev.EmotionDetected(self.call.id, emotion))
            trigger = self.triggers.get(emotion.type)
            if trigger is not None and trigger.action is not None and not emotion.rising:
                actions.add(trigger.action)
        return actions

    def _slow_down(self) -> None:
        """A patient turn-taking style and a calmer voice, for the rest of the call."""
        if self._slowed:
            return
        self._slowed = True
        self.listener.config.style = endpoint.style("patient")
        calmer = getattr(self.tts, "calmer", None)
        if calmer is not None:
            self.tts = calmer()
        logger.info(log.kv(event="slowing_down", voice=getattr(self.tts, "name", "?")))

    async def _lead(self, reply: _Reply) -> str | None:
        """The trigger lines that lead this reply, one after the other."""
        if not reply.announces or reply.reading is None:
            return None
        lines = []
        for state in reply.announces:
            emotion = Emotion(
                state,
                reply.reading.scores[state],
                reply.reading.confidence,
                reply.turn,
                self.emotion.seconds_in() if self.emotion is not None else 0.0,
                reply.text,
            )
            line = await line_of(self.triggers[state], self.call, emotion)
            if line:
                lines.append(line)
        return " ".join(lines) or None

    def _merge_unanswered(self, ended: TurnEnded) -> str | None:
        """The caller spoke again before a word of the reply to their last
        turn was heard (they had paused, not finished; at most a syllable of
        the reply went out before it stopped): the two are one turn.
        Returns the whole turn's text, or None when there is nothing to merge."""
        last = self._answered
        if last is None or last.turn == ended.turn or last.handle.heard_text:
            return None
        if any(h.heard_text for h in self._all_handles() if h is not last.handle):
            return None  # the agent said something else in between
        last.handle.cancel()
        if self._reply is last:
            self._reply = None
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i].get("role") == "user":
                if self.history[i].get("content") in (last.user_content, last.text):
                    del self.history[i]
                break
        if last.metrics in self.metrics:
            self.metrics.remove(last.metrics)
        logger.info(
            log.kv(
                event="turns_merged",
                first=last.text,
                then=ended.text,
                heard=round(last.handle.heard_fraction, 3),
                state=last.handle.state.value,
            )
        )
        return f"{last.text} {ended.text}"

    def _confirm(self, reply: _Reply) -> None:
        """The turn is the caller's: its reply goes into the history and plays."""
        speaking = self.speaking
        if speaking is not None and speaking.source == "reply" and speaking is not reply.handle:
            speaking.interrupt()

        async def go() -> None:
            await reply.planned.wait()
            if self.call.transferred_to is not None or self.media.ended:
                reply.handle.cancel()  # a handler handed the caller to a person
            if not reply.handle.ended:
                self.history.append({"role": "user", "content": reply.user_content or reply.text})
                self._record_agent_turn(reply.handle)
            reply.metrics.released = self.clock.now()
            self._start_speaking(reply.handle)

        task = asyncio.ensure_future(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------- speaking
    def _all_handles(self) -> list[SpeechHandle]:
        handles = [h for h in (self.speaking, *self._queue) if h is not None]
        if self._reply is not None and self._reply.handle not in handles:
            handles.append(self._reply.handle)
        if self._spec is not None:
            handles.append(self._spec.handle)
        return handles

    def _enqueue(self, handle: SpeechHandle) -> None:
        if self.speaking is None or self.speaking.ended:
            self._start_speaking(handle)
        else:
            self._queue.append(handle)

    def _start_speaking(self, handle: SpeechHandle) -> None:
        if handle.ended:
            self._spoken(handle)
            return
        if self.speaking is not None and not self.speaking.ended and self.speaking is not handle:
            self._queue.appendleft(handle)
            return
        self.speaking = handle
        caller_on = self.listener.phase in (Phase.SPEAKING, Phase.CUE)
        if self.config.barge_in and self._barge is None and caller_on:
            self._barge = _BargeIn(self.listener.turn, self.listener.audio_ms)
        handle.release()
        if self._barge is not None:
            # the caller is talking: this waits, paused, for their words to
            # say whether to go on
            handle.pause()

        def spoken(_f: asyncio.Future[bool]) -> None:
            self._spoken(handle)

        asyncio.ensure_future(handle.wait()).add_done_callback(spoken)
        self._refresh_state("speaking")

    def _spoken(self, handle: SpeechHandle) -> None:
        """An utterance is over (played, cut or dropped): it goes into the
        transcript as heard, and the next one starts."""
        heard = handle.heard_text
        if handle.source != "filler" and (heard or handle.planned_text):
            if heard:
                self._agent_said.append(heard)
                self.history.append({"role": "assistant", "content": heard})
        if self._reply is not None and self._reply.handle is handle:
            m = self._reply.metrics
            m.interrupted = handle.state is SpeechState.INTERRUPTED
            self._reply = None
            self.call.publish(
                ev.TurnLatency(
                    self.call.id,
                    m.index,
                    m.as_ms(),
                    m.answer,
                    m.endpoint_reason,
                    m.preemptive,
                    m.interrupted,
                    speech_end_at=(
                        time.time() - (self.clock.now() - m.speech_end)
                        if m.speech_end is not None
                        else None
                    ),
                )
            )
        self._last_activity = self.clock.now()
        if self.speaking is handle:
            self.speaking = None
        if self.speaking is None:
            self._speak_next()
        self._refresh_state("spoken")
        self._poke()

    def _speak_next(self) -> None:
        while self._queue:
            handle = self._queue.popleft()
            if not handle.ended:
                self._start_speaking(handle)
                return

    def _first_frame(self, metrics: TurnMetrics | None) -> Callable[[float], None]:
        def mark(at: float) -> None:
            if metrics is not None and metrics.first_frame_sent is None:
                metrics.first_frame_sent = at
            self._refresh_state("first frame")

        return mark

    def _text_handle(self, text: str, source: str) -> SpeechHandle:
        """A handle that speaks ``text`` (a greeting, a handler's say)."""
        handle = SpeechHandle(self.media, source=source, held=True)
        handle.on_first_frame = self._first_frame(None)

        async def make() -> None:
            await self._speak_into(handle, text, None)
            handle.finish()
            self._record_agent_turn(handle)

        handle.task = asyncio.ensure_future(make())
        return handle

    def stop_speaking(self) -> int:
        """``call.stop_speaking``: everything the agent is saying or about to
        say stops now; returns the frames dropped."""
        dropped = 0
        for handle in self._all_handles():
            dropped += handle.interrupt()
        self._queue.clear()
        return dropped

    async def say(self, text: str) -> Turn:
        """``call.say``: speak ``text`` through the same path as replies, so a
        caller's barge-in stops it the same way."""
        handle = self._text_handle(text, "say")
        self._enqueue(handle)
        await handle.wait()
        if handle.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await handle.task
        return self._turn_of(handle)

    def _turn_of(self, handle: SpeechHandle) -> Turn:
        for turn in reversed(self.call.transcript):
            if getattr(turn, "speech_id", None) == handle.id:
                return turn
        return Turn("agent", handle.heard_text, time.time(), time.time())

    def _record_agent_turn(self, handle: SpeechHandle) -> None:
        """When ``handle`` ends, the caller's transcript gets what was heard."""
        turn = Turn("agent", "", time.time())
        turn.speech_id = handle.id  # type: ignore[attr-defined]
        self.call.transcript.append(turn)

        def ended(_f: Any) -> None:
            turn.planned_text = handle.planned_text
            turn.interrupted = handle.state is not SpeechState.DONE
            turn.text = handle.heard_text if turn.interrupted else handle.planned_text
            turn.ended_at = time.time()
            if not turn.text:  # never heard: it was not said
                with contextlib.suppress(ValueError):
                    self.call.transcript.remove(turn)
                return
            self.call.publish_turn(turn)

        asyncio.ensure_future(handle.wait()).add_done_callback(ended)

    async def _speak_into(
        self, handle: SpeechHandle, text: str, metrics: TurnMetrics | None
    ) -> None:
        """A fixed line (a fact, the greeting, a goodbye): its clauses' audio
        comes from the speech cache when it has been rendered before."""
        for chunk in clauses(text):
            await self._synth(handle, chunk, metrics, fixed=True)

    async def _synth(
        self, handle: SpeechHandle, text: str, metrics: TurnMetrics | None, fixed: bool = False
    ) -> None:
        handle.begin(text)
        self.call.usage.tts_chars += len(text)
        async for pcm in self._audio_of(text, fixed):
            if handle.ended:
                return
            if metrics is not None and metrics.tts_first_audio is None:
                metrics.tts_first_audio = self.clock.now()
            handle.audio(pcm)

    async def _audio_of(self, text: str, fixed: bool) -> AsyncIterator[bytes]:
        """The voice's audio for ``text``; a fixed line's from the speech
        cache, and kept there once rendered whole."""
        cached = self.speech_cache.get(self.tts, text, self.rate) if fixed else None
        if cached is not None:
            yield cached
            return
        rendered = bytearray()
        async for pcm in self.tts.stream(text, self.rate):
            rendered += pcm
            yield pcm
        if fixed:
            self.speech_cache.put(self.tts, text, self.rate, bytes(rendered))

    # ------------------------------------------------------------- replies
    def _system_message(self) -> dict[str, Any]:
        return system_message(self.config.system_prompt, self.small)

    def _messages(self, user: dict[str, Any] | None) -> list[dict[str, Any]]:
        """System prompt, the history (new context facts first), and the
        caller's message if it is not in the history yet."""
        while self._context_seen < len(self.call.context):
            item = self.call.context[self._context_seen]
            self._context_seen += 1
            fact = item if isinstance(item, str) else json.dumps(item, default=str)
            self.history.append({"role": "system", "content": f"Fact for this call: {fact}"})
        history = self.history
        if self.small and len(history) > self.config.small_history:
            # drop the older half at once: the prompt then extends itself
            # turn after turn until the next trim
            keep = _trim_start(history, self.config.small_history // 2)
            del history[:keep]
        messages = [self._system_message(), *history]
        if user is not None and (not history or history[-1] is not user):
            messages.append(user)
        return messages

    def _start_producing(self, reply: _Reply) -> None:
        task = asyncio.ensure_future(self._produce(reply))
        task.add_done_callback(lambda _t: reply.planned.set())
        reply.handle.task = task

    async def _produce(self, reply: _Reply) -> None:
        """Make the reply for one caller turn into its (held) handle."""
        handle, metrics, text = reply.handle, reply.metrics, reply.text
        try:
            lead = await self._lead(reply)
            plan = await self._plan(text)
            if lead is not None and plan.direct is None and not self.small:
                state = " and ".join(reply.announces)
                plan.user_content = (
                    f"{plan.user_content}\n(The caller sounds {state}; you have just "
                    f'said: "{lead}". Go on from there.)'
                )
            reply.user_content = plan.user_content
            reply.planned.set()
            if lead is not None:
                await self._speak_into(handle, lead, metrics)
            if plan.direct is not None:
                metrics.answer = plan.kind
                await self._speak_into(handle, plan.direct, metrics)
            else:
                await self._model_rounds(reply, plan)
        except asyncio.CancelledError:
            reply.planned.set()
            raise
        except Exception:
            logger.exception(log.kv(event="reply_failed"))
            reply.planned.set()
            if not handle.ended and not handle.planned_text:
                await self._speak_into(handle, TROUBLE, metrics)
        finally:
            handle.finish()

    async def _plan(self, text: str) -> _Plan:
        tools = list(self.tools.values())
        routed = route_tool(text, tools) if tools else None
        match: Match | None = None
        if self.knowledge and routed is None:
            match = await self.knowledge.best(text)
        cfg = self.config
        if match is not None and match.score >= cfg.fact_direct:
            return _Plan(text, direct=match.fact.answer, kind="fact", match=match)
        if (
            match is not None
            and match.score >= cfg.fact_relevant
            and match.margin >= cfg.fact_margin
        ):
            if self.small:
                return _Plan(text, direct=match.fact.answer, kind="fact", match=match)
            return _Plan(f"(Fact: {match.fact.answer})\n{text}", match=match)
        return _Plan(text, match=match)

    async def _model_rounds(self, reply: _Reply, plan: _Plan) -> None:
        handle, metrics = reply.handle, reply.metrics
        user = {"role": "user", "content": plan.user_content}
        metrics.answer = "model"
        for round_ in range(self.config.max_tool_rounds + 1):
            # once the turn is confirmed the caller's message is in the history
            messages = self._messages(None if handle.released.is_set() else user)
            usage = self.call.usage
            usage.llm_tokens_in += sum(usage.tokens(str(m.get("content") or "")) for m in messages)
            tools = list(self.tools.values()) if round_ < self.config.max_tool_rounds else []
            calls: list[ToolCallRequest] = []
            chunker = SentenceChunker()
            sources = [self.config.system_prompt, plan.user_content] + [
                str(m.get("content") or "") for m in self.history if m.get("role") == "tool"
            ]
            try:
                stream = self.session.stream(messages, tools)
                async with _deadline_iter(stream, self.config.llm_timeout_s) as events:
                    async for event in events:
                        if metrics.llm_first_token is None:
                            metrics.llm_first_token = self.clock.now()
                        if isinstance(event, ToolCallRequest):
                            calls.append(event)
                            continue
                        if not isinstance(event, TextDelta):
                            continue
                        usage.llm_tokens_out += usage.tokens(event.text)
                        for chunk in chunker.feed(event.text):
                            if not await self._speak_chunk(handle, chunk, sources, metrics):
                                return
                for chunk in chunker.flush():
                    if not await self._speak_chunk(handle, chunk, sources, metrics):
                        return
            except (LLMError, TimeoutError) as exc:
                logger.warning(log.kv(event="llm_failed", error=exc))
                if not handle.planned_text:
                    metrics.answer = "fallback"
                    await self._speak_into(handle, TROUBLE, metrics)
                return
            if not calls:
                return
            metrics.answer = "tool"
            direct = await self._run_tools(reply, calls)
            if handle.ended:
                return  # a tool handed the caller to a person
            if direct:
                await self._speak_into(handle, " ".join(direct), metrics)
                return

    async def _speak_chunk(
        self, handle: SpeechHandle, chunk: str, sources: Sequence[str], metrics: TurnMetrics
    ) -> bool:
        """Speak one chunk of the model's reply; a small model's chunk that
        states what no fact, tool or caller said is replaced by an honest
        "not sure" (returns False: the reply stops there)."""
        if self.small:
            invented = ungrounded(chunk, sources)
            if invented:
                logger.info(log.kv(event="ungrounded_reply", words=",".join(invented)))
                metrics.answer = "fallback"
                await self._speak_into(handle, NOT_SURE, metrics)
                return False
        await self._synth(handle, chunk, metrics)
        return True

    async def _run_tools(self, reply: _Reply, calls: list[ToolCallRequest]) -> list[str]:
        """Run the requested tools. A tool with side effects waits until the
        turn is confirmed; a read-only one may run while the reply is held.
        Results always reach the history, even when the caller interrupts
        (the tool finishes in the background): the model never sees a tool
        request without its result. Returns what the tools asked to say
        directly (a top-level "say")."""
        handle, metrics = reply.handle, reply.metrics
        if any(not getattr(self.tools.get(c.name), "read_only", False) for c in calls):
            await handle.released.wait()
            if handle.ended:
                return []
        tasks: list[asyncio.Task[str]] = []
        for c in calls:
            metrics.tool_calls.append(c.name)
            tool = self.tools.get(c.name)
            if tool is None:
                tasks.append(
                    asyncio.ensure_future(_const(f'{{"error": "no tool named {c.name}"}}'))
                )
            else:
                tasks.append(
                    asyncio.ensure_future(
                        asyncio.wait_for(
                            tool.run(c.arguments, self.call), self.config.tool_timeout_s
                        )
                    )
                )
        filler: asyncio.Task[None] | None = None
        try:
            done, _ = await asyncio.wait(tasks, timeout=self.config.tool_filler_after_s)
            if len(done) < len(tasks):
                filler = asyncio.ensure_future(self._filler(handle))
            results = await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
        except asyncio.CancelledError:
            # cut short (barge-in, hangup): the tools finish anyway, and
            # their results join the history where the request was made
            await handle.released.wait()
            self._record_tools_later(calls, tasks)
            raise
        finally:
            if filler is not None and not filler.done():
                await asyncio.gather(filler, return_exceptions=True)
        await handle.released.wait()
        texts = [_tool_text(r) for r in results]
        self._record_tools(calls, texts, len(self.history))
        direct = [s for s in (_say_field(t) for t in texts) if s]
        return direct if len(direct) == len(calls) else []

    async def _filler(self, handle: SpeechHandle) -> None:
        handle.begin("")
        async for pcm in self.tts.stream(self.config.tool_filler_text, self.rate):
            handle.audio(pcm)
        handle.begin("")

    def _record_tools(self, calls: list[ToolCallRequest], results: list[str], at: int) -> None:
        block: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ],
            }
        ]
        for c, result in zip(calls, results, strict=True):
            logger.info(log.kv(event="tool_called", tool=c.name, arguments=c.arguments))
            self.call.tool_calls.append(
                {"name": c.name, "arguments": c.arguments, "result": result, "at": time.time()}
            )
            self.call.publish(ev.ToolCalled(self.call.id, c.name, c.arguments, result))
            block.append({"role": "tool", "tool_call_id": c.id, "name": c.name, "content": result})
        self.history[at:at] = block

    def _record_tools_later(
        self, calls: list[ToolCallRequest], tasks: list[asyncio.Task[str]]
    ) -> None:
        at = len(self.history)

        async def finish() -> None:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            self._record_tools(calls, [_tool_text(r) for r in results], min(at, len(self.history)))

        task = asyncio.ensure_future(finish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------- silence
    def _reprompt(self) -> None:
        self._last_activity = self.clock.now()
        if self._reprompts_done < self.config.reprompts:
            self._reprompts_done += 1
            handle = self._text_handle(self.config.reprompt_text, "reprompt")
            self._enqueue(handle)
            return
        handle = self._text_handle(self.config.goodbye_text, "goodbye")

        async def hang_up_after() -> None:
            await handle.wait()
            await self.media.hangup()

        task = asyncio.ensure_future(hang_up_after())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._enqueue(handle)


@dataclass
class _Plan:
    user_content: str
    direct: str | None = None
    kind: str = ""
    match: Match | None = None


async def _const(value: str) -> str:
    return value


def _tool_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, TimeoutError):
        return '{"error": "the lookup timed out"}'
    if isinstance(result, BaseException):
        return json.dumps({"error": f"{type(result).__name__}: {result}"})
    return json.dumps(result, default=str)


def _trim_start(history: list[dict[str, Any]], keep: int) -> int:
    """How many messages to drop so ``keep`` remain, never starting inside a
    tool exchange."""
    cut = max(0, len(history) - keep)
    while cut < len(history) and history[cut].get("role") in ("tool", "assistant"):
        cut += 1
    return cut


def _say_field(result: str) -> str | None:
    try:
        data = json.loads(result)
    except ValueError:
        return None
    say = data.get("say") if isinstance(data, dict) else None
    return say if isinstance(say, str) and say.strip() else None


def _has_words(text: str) -> bool:
    return bool(re.search(r"[A-Za-z0-9]", text))


@contextlib.asynccontextmanager
async def _deadline_iter(stream: Any, timeout: float) -> AsyncIterator[Any]:
    """Iterate ``stream`` with a deadline on each next item."""

    async def gen() -> Any:
        it = stream.__aiter__()
        while True:
            try:
                item = await asyncio.wait_for(it.__anext__(), timeout)
            except StopAsyncIteration:
                return
            yield item

    g = gen()
    try:
        yield g
    finally:
        await g.aclose()
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

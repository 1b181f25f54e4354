"""Listening: the caller's side of the call, frame by frame.

The listener turns caller audio into a few events for the turn loop:

- :class:`VoiceCue`: a voice has just started (one or two frames of it, by
  webrtcvad and the frame's level against the line's noise floor and the
  agent's possible echo). The fastest and least certain sign; the turn loop
  pauses the agent on it.
- :class:`CueDropped`: that cue was not confirmed by the neural VAD.
- :class:`SpeechStarted`: Silero confirms caller speech.
- :class:`Hypothesis`: the caller paused; the transcript of everything said
  so far, decoded at once. The turn loop starts its whole reply on it.
- :class:`Resumed`: the caller went on after a pause (the hypothesis is stale).
- :class:`TurnEnded`: the end of the turn is decided, with its transcript.
- :class:`NoTurn`: what was heard was no turn (a click, noise, no words).

Everything is measured in audio time (the frames received), so frames that
arrive in a burst after a network stall count as the speech they carry; a
PBX that stops sending frames (DTX) is fed silence by :meth:`Listener.idle`.
The neural VAD, the end-of-turn model and the recogniser run off the event
loop; a stale decode is cancelled, never queued behind a fresh one.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import log
from ..audio.levels import EchoEstimate, NoiseFloor, level_db
from ..audio.pcm import frame_bytes
from ..providers.stt import Transcript
from ..providers.vad import VADResult
from . import endpoint
from .endpoint import Decision, TurnStyle

logger = log.get(__name__)

FRAME_MS = 20
#: how fast the tracked speaking level falls while the caller speaks (dB a frame)
SPEECH_LEVEL_DECAY_DB = 0.05


class STTLike(Protocol):
    name: str

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript: ...


class VADLike(Protocol):
    threshold: float

    async def feed_async(self, pcm: bytes) -> list[VADResult]: ...


class TurnModel(Protocol):
    async def probability(self, pcm: bytes, sample_rate: int) -> float: ...


class TextTurnModel(Protocol):
    async def probability(self, text: str) -> float: ...


class GateLike(Protocol):
    def is_speech(self, frame: bytes, sample_rate: int) -> bool: ...


# ----------------------------------------------------------------- events
@dataclass(frozen=True)
class VoiceCue:
    at_ms: float
    level_db: float


@dataclass(frozen=True)
class CueDropped:
    at_ms: float


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: float


@dataclass(frozen=True)
class Hypothesis:
    """The caller paused ``speech_end_ms`` into the stream; ``transcript``
    is all of this turn so far."""

    turn: int
    transcript: Transcript
    speech_end_ms: float

    @property
    def text(self) -> str:
        return self.transcript.text.strip()


@dataclass(frozen=True)
class Resumed:
    turn: int
    at_ms: float


@dataclass(frozen=True)
class TurnEnded:
    turn: int
    transcript: Transcript
    speech_end_ms: float
    decided_ms: float
    reason: str
    turn_p: float | None
    audio_s: float
    text_p: float | None = None

    @property
    def text(self) -> str:
        return self.transcript.text.strip()


@dataclass(frozen=True)
class NoTurn:
    turn: int
    why: str


ListenerEvent = VoiceCue | CueDropped | SpeechStarted | Hypothesis | Resumed | TurnEnded | NoTurn


class Phase(enum.Enum):
    """Where the caller is: quiet, a voice just heard (unconfirmed),
    speaking, or paused with the turn's end undecided."""

    QUIET = "quiet"
    CUE = "cue"
    SPEAKING = "speaking"
    PAUSED = "paused"


@dataclass
class ListenerConfig:
    style: TurnStyle = field(default_factory=lambda: endpoint.style("balanced"))
    #: frames of voice that raise a cue (20 ms each)
    cue_frames: int = 2
    #: a cue the neural VAD does not confirm within this much audio is dropped
    cue_confirm_ms: int = 240
    #: a voice is this much over the noise floor and the predicted echo
    cue_margin_db: float = 9.0
    #: a frame this far over the noise floor is voice whatever webrtcvad says
    loud_margin_db: float = 18.0
    #: a frame this far under the caller's speaking level is not voice
    tail_db: float = 35.0
    #: quiet after a voice before the listener calls it a pause (and decodes)
    pause_ms: int = 60
    #: frames of voice that end a pause (the caller goes on)
    resume_frames: int = 2
    #: the longest turn; longer speech is cut into turns this long
    max_utterance_s: float = 30.0
    #: audio kept before a voice starts, so its first syllable is not lost
    preroll_ms: int = 300
    #: the longest recogniser wait for a turn's final transcript
    stt_timeout_s: float = 10.0


class Listener:
    """One call's caller side. Feed it audio with :meth:`feed` (in order,
    awaiting each) and :meth:`idle` when frames stop; read its events through
    ``on_event``."""

    def __init__(
        self,
        rate: int,
        *,
        vad: VADLike,
        stt: STTLike,
        turn_model: TurnModel | None,
        on_event: Callable[[ListenerEvent], None],
        text_turn: TextTurnModel | None = None,
        config: ListenerConfig | None = None,
        gate: GateLike | None = None,
        echo: EchoEstimate | None = None,
    ) -> None:
        self.rate = rate
        self.vad = vad
        self.stt = stt
        self.turn_model = turn_model
        self.text_turn = text_turn
        self.on_event = on_event
        self.config = config or ListenerConfig()
        self.echo = echo or EchoEstimate()
        if gate is None:
            import webrtcvad

            gate = webrtcvad.Vad(3)
        self.gate = gate
        self._gate_ok = rate in (8000, 16000, 32000, 48000)
        self.frame_size = frame_bytes(rate)
        self.noise = NoiseFloor()
        self.phase = Phase.QUIET
        self.audio_ms = 0.0  # stream time at the end of what was fed
        self.turn = 0  # numbers the utterances; events carry it
        self._pending = b""
        self._buf = bytearray()  # this utterance's audio (with preroll)
        self._max_bytes = int(self.config.max_utterance_s * rate) * 2
        self._preroll_bytes = rate * self.config.preroll_ms // 1000 * 2
        self._voice_run = 0
        self._speech_db = -96.0  # the caller's speaking level, tracked
        self._cue_at: float | None = None
        self._cue_level = -96.0
        self.speech_ms = 0.0
        self.started_ms: float | None = None
        self.last_voice_ms: float | None = None
        self._silero_speech = False
        self._decode: asyncio.Task[Transcript] | None = None
        self._decode_for: float | None = None  # speech_end_ms it decodes up to
        self._hypothesis: Hypothesis | None = None
        self._score: asyncio.Task[float] | None = None
        self.turn_p: float | None = None
        self.text_p: float | None = None
        self._text_score: asyncio.Task[float] | None = None
        self._endings: set[asyncio.Task[None]] = set()
        self._discarded: set[int] = set()
        self.decision: Decision | None = None
        self.closed = False

    # ---------------------------------------------------------------- input
    async def feed(self, pcm: bytes, now_s: float = 0.0) -> None:
        """Caller audio, any length; processed in 20 ms frames."""
        data = self._pending + pcm
        size = self.frame_size
        whole = len(data) // size * size
        self._pending = data[whole:]
        for i in range(0, whole, size):
            await self._frame(data[i : i + size], now_s)

    def silent_for(self, gap_ms: float) -> None:
        """No frame for ``gap_ms`` since the last one, while the caller is
        pausing: a PBX that stops sending frames in silence (silence
        suppression, or no RTP at all while the caller is quiet) must not
        delay the end of the turn. Decided as if that much silence had come,
        without adding it to the stream (a late frame still counts where it
        belongs)."""
        if self.phase is Phase.PAUSED and gap_ms > 0:
            self._consider(self.audio_ms + gap_ms)

    async def idle(self, gap_s: float, now_s: float = 0.0) -> None:
        """No frames for ``gap_s`` (DTX, silence suppression): that is silence."""
        if self.phase is Phase.QUIET:
            return
        frames = min(int(gap_s * 1000 / FRAME_MS), 100)
        for _ in range(frames):
            await self._frame(bytes(self.frame_size), now_s)

    # ------------------------------------------------------------ per frame
    async def _frame(self, frame: bytes, now_s: float) -> None:
        cfg = self.config
        self.audio_ms += FRAME_MS
        now = self.audio_ms
        db = level_db(frame)
        floor = self.noise.db
        echo_db = self.echo.predicted_db(now_s)
        over = db - max(floor, echo_db)
        webrtc = self._gate_ok and self.gate.is_speech(frame, self.rate)
        voice = (webrtc and over >= cfg.cue_margin_db) or db - floor >= cfg.loud_margin_db
        if voice and echo_db > floor and over < cfg.cue_margin_db:
            voice = False  # as loud as the agent's own echo could be
        if voice and db < self._speech_db - cfg.tail_db:
            # far below how loud this caller speaks: the fading tail of their
            # last syllable (on a clean line it stays over the noise floor
            # for a hundred milliseconds after the voice ended), a breath
            voice = False
        if voice:
            self._speech_db = max(db, self._speech_db - SPEECH_LEVEL_DECAY_DB)
        else:
            self.noise.update(db)
        self._voice_run = self._voice_run + 1 if voice else 0
        self._keep(frame)
        results = await self.vad.feed_async(frame)
        for r in results:
            self._silero_speech = r.speech
        if self.closed:
            return
        if self.phase is Phase.QUIET:
            if self._voice_run >= cfg.cue_frames:
                self._start_cue(now, db)
            elif (
                self._silero_speech
                and db - floor >= cfg.cue_margin_db
                and db >= self._speech_db - cfg.tail_db
            ):
                # a soft voice webrtcvad missed (not the neural VAD's lag
                # after the last turn: the frame must be audible itself)
                self._start_cue(now, db)
                self._confirm(now)
        elif self.phase is Phase.CUE:
            if voice:
                self.last_voice_ms = now
                self.speech_ms += FRAME_MS
            if self._silero_speech:
                self._confirm(now)
            elif self._cue_at is not None and now - self._cue_at > cfg.cue_confirm_ms:
                self._drop_cue(now)
        elif self.phase is Phase.SPEAKING:
            audible = db >= self._speech_db - cfg.tail_db
            if voice or (self._silero_speech and db - floor >= cfg.cue_margin_db and audible):
                self.last_voice_ms = now
                self.speech_ms += FRAME_MS
            if self._utterance_full():
                logger.info(log.kv(event="utterance_cap", seconds=cfg.max_utterance_s))
                self._pause(now)
                self._end_turn(now, "utterance_cap")
                return
            if self.last_voice_ms is not None and now - self.last_voice_ms >= cfg.pause_ms:
                self._pause(now)
        elif self.phase is Phase.PAUSED:
            if self._voice_run >= cfg.resume_frames:
                self._resume(now)
                self.last_voice_ms = now
                self.speech_ms += FRAME_MS * self._voice_run
            else:
                self._consider(now)

    def _keep(self, frame: bytes) -> None:
        self._buf += frame
        if self.phase is Phase.QUIET and len(self._buf) > self._preroll_bytes:
            del self._buf[: len(self._buf) - self._preroll_bytes]

    def _utterance_full(self) -> bool:
        return len(self._buf) >= self._max_bytes

    # ------------------------------------------------------------ the phases
    def _start_cue(self, now: float, db: float) -> None:
        self.turn += 1
        self.phase = Phase.CUE
        voiced = self._voice_run * FRAME_MS
        self._cue_at = now
        self._cue_level = db
        self.started_ms = now - voiced
        self.last_voice_ms = now
        self.speech_ms = float(voiced)
        self.turn_p = None
        self._hypothesis = None
        self.on_event(VoiceCue(now, db))

    def _confirm(self, now: float) -> None:
        self.phase = Phase.SPEAKING
        self._cue_at = None
        self.on_event(SpeechStarted(self.started_ms if self.started_ms is not None else now))

    def _drop_cue(self, now: float) -> None:
        self.on_event(CueDropped(now))
        self._reset()

    def _pause(self, now: float) -> None:
        """The voice stopped: decode everything so far and ask the model."""
        self.phase = Phase.PAUSED
        end = self.last_voice_ms if self.last_voice_ms is not None else now
        if self.speech_ms < self.config.style.min_speech_ms:
            return  # too short to be a turn yet: wait and see
        self._start_decode(end)
        self._start_score()

    def _resume(self, now: float) -> None:
        self.phase = Phase.SPEAKING
        self._cancel_work()
        self.turn_p = None
        self.text_p = None
        self._hypothesis = None
        self.on_event(Resumed(self.turn, now))

    def _consider(self, now: float) -> None:
        """In a pause: is the turn over?"""
        end = self.last_voice_ms if self.last_voice_ms is not None else now
        silence = now - end
        style = self.config.style
        if self.speech_ms < style.min_speech_ms:
            if silence >= style.incomplete_ms:
                self.on_event(NoTurn(self.turn, "too short"))
                self._reset()
            return
        text = self._hypothesis.text if self._hypothesis is not None else None
        text_p = self.text_p
        if text is not None and self.text_turn is not None and text_p is None:
            text_p = endpoint.PENDING
        self.decision = endpoint.decide(style, silence, self.turn_p, text, text_p)
        if self.decision.over:
            logger.debug(
                log.kv(
                    event="turn_over",
                    reason=self.decision.reason,
                    silence_ms=round(silence),
                    audio_ms=self.audio_ms,
                )
            )
            self._end_turn(now, self.decision.reason)

    def next_decision_ms(self) -> float | None:
        """Stream time at which the pending decision should be looked at again."""
        if self.phase is Phase.PAUSED and self.last_voice_ms is not None:
            wait = self.decision.wait_ms if self.decision is not None else None
            if wait is not None:
                return self.last_voice_ms + wait
            return self.last_voice_ms + self.config.style.incomplete_ms
        if self.phase is Phase.CUE and self._cue_at is not None:
            return self._cue_at + self.config.cue_confirm_ms
        return None

    # -------------------------------------------------------- models' work
    def read_now(self) -> None:
        """Decode what the caller has said so far although they are still
        talking (their words decide whether they are interrupting); the
        result comes as a :class:`Hypothesis`."""
        if self.phase not in (Phase.SPEAKING, Phase.CUE):
            return
        if self._decode is not None and not self._decode.done():
            return
        self._start_decode(self.audio_ms, force=True)

    def _start_decode(self, end_ms: float, force: bool = False) -> None:
        if self._decode is not None and self._decode_for == end_ms and not self._decode.done():
            return
        self._cancel_decode()
        audio = bytes(self._buf)
        turn = self.turn
        self._decode_for = end_ms
        task = asyncio.ensure_future(self.stt.transcribe(audio, self.rate))
        self._decode = task

        def done(t: asyncio.Task[Transcript]) -> None:
            if t.cancelled() or self._decode is not t or self.turn != turn:
                return
            exc = t.exception()
            if exc is not None:
                return  # the turn's end reports it
            hypothesis = Hypothesis(turn, t.result(), end_ms)
            if force:
                if self.phase is not Phase.QUIET:
                    self.on_event(hypothesis)
                return
            self._hypothesis = hypothesis
            if self.phase is Phase.PAUSED:
                self.on_event(hypothesis)
                self._start_text_score(hypothesis.text)
                self._consider(self.audio_ms)

        task.add_done_callback(done)

    def _start_score(self) -> None:
        if self.turn_model is None:
            return
        if self._score is not None and not self._score.done():
            self._score.cancel()
        audio = bytes(self._buf)
        turn = self.turn
        task = asyncio.ensure_future(self.turn_model.probability(audio, self.rate))
        self._score = task

        def done(t: asyncio.Task[float]) -> None:
            if t.cancelled() or self._score is not t or self.turn != turn:
                return
            if t.exception() is not None:
                logger.warning(log.kv(event="turn_model_failed", error=repr(t.exception())))
                return
            self.turn_p = t.result()
            logger.debug(log.kv(event="turn_p", p=round(self.turn_p, 3), audio_ms=self.audio_ms))
            if self.phase is Phase.PAUSED:
                self._consider(self.audio_ms)

        task.add_done_callback(done)

    def _start_text_score(self, text: str) -> None:
        self.text_p = None
        if self.text_turn is None or not text:
            return
        turn = self.turn
        task = asyncio.ensure_future(self.text_turn.probability(text))
        self._text_score = task

        def done(t: asyncio.Task[float]) -> None:
            if t.cancelled() or self._text_score is not t or self.turn != turn:
                return
            if t.exception() is not None:
                logger.warning(log.kv(event="text_turn_failed", error=repr(t.exception())))
                return
            self.text_p = t.result()
            logger.debug(log.kv(event="text_p", p=round(self.text_p, 4), audio_ms=self.audio_ms))
            if self.phase is Phase.PAUSED:
                self._consider(self.audio_ms)

        task.add_done_callback(done)

    def _cancel_decode(self) -> None:
        if self._decode is not None and not self._decode.done():
            self._decode.cancel()
        self._decode = None
        self._decode_for = None

    def _cancel_work(self) -> None:
        self._cancel_decode()
        for task in (self._score, self._text_score):
            if task is not None and not task.done():
                task.cancel()
        self._score = None
        self._text_score = None

    # ---------------------------------------------------------- turn's end
    def _end_turn(self, now: float, reason: str) -> None:
        """The turn is over: its final transcript is the decode already under
        way (or started now). The listener is free for the next utterance at
        once; the transcript follows as :class:`TurnEnded`."""
        end = self.last_voice_ms if self.last_voice_ms is not None else now
        if self._decode is None or self._decode_for != end:
            self._start_decode(end)
        decode = self._decode
        assert decode is not None
        turn, turn_p, text_p = self.turn, self.turn_p, self.text_p
        audio_s = len(self._buf) / 2 / self.rate
        timeout = self.config.stt_timeout_s
        self._decode = None  # it belongs to the ending now: no reset cancels it
        for scoring in (self._score, self._text_score):
            if scoring is not None and not scoring.done():
                scoring.cancel()
        self._reset()

        async def finish() -> None:
            try:
                transcript = await asyncio.wait_for(asyncio.shield(decode), timeout)
            except asyncio.CancelledError:
                decode.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - any recogniser fault ends this turn only
                decode.cancel()
                logger.warning(log.kv(event="stt_failed", error=repr(exc)))
                self.on_event(NoTurn(turn, f"recogniser failed: {exc!r}"))
                return
            if turn in self._discarded:
                return
            if not any(ch.isalnum() for ch in transcript.text):
                logger.info(log.kv(event="no_words", audio_s=round(audio_s, 2)))
                self.on_event(NoTurn(turn, "no words"))
                return
            self.on_event(TurnEnded(turn, transcript, end, now, reason, turn_p, audio_s, text_p))

        task = asyncio.ensure_future(finish())
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)

    async def settled(self) -> None:
        """Until every ended turn's transcript has been reported."""
        while self._endings:
            await asyncio.gather(*list(self._endings), return_exceptions=True)

    def discard(self, turn: int) -> None:
        """The turn loop settled what utterance ``turn`` was (a backchannel,
        the agent's own echo): it is no turn, and no event about it follows."""
        self._discarded.add(turn)
        if turn == self.turn and self.phase is not Phase.QUIET:
            self._cancel_work()
            self._reset()

    def _reset(self) -> None:
        self.phase = Phase.QUIET
        self._decode = None
        self._decode_for = None
        self._score = None
        self._cue_at = None
        self.speech_ms = 0.0
        self.started_ms = None
        self.last_voice_ms = None
        self.turn_p = None
        self.text_p = None
        self._text_score = None
        self.decision = None
        self._hypothesis = None
        del self._buf[: max(0, len(self._buf) - self._preroll_bytes)]

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop; returns the tasks still winding down."""
        self.closed = True
        tasks = [t for t in (self._decode, self._score, *self._endings) if t is not None]
        for t in tasks:
            t.cancel()
        return tasks

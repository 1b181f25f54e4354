"""One call's reading of the caller: scores per utterance, events when a
state sets in.

The turn loop hands :class:`EmotionReader` the caller's audio with the
listener's view of it (speaking or not, which utterance), and asks for a
:class:`Reading` when it has the words: at each pause (the reply is being
prepared then, so it can be steered) and at the turn's end. A reading
becomes :class:`Emotion` events through :meth:`EmotionReader.commit`, with
hysteresis: a state is announced when its score crosses its threshold,
again only if it grows clearly stronger, and it must fall well below the
threshold before it can be announced anew. Nothing here blocks: scoring an
utterance is a few milliseconds of numpy at its end.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from ... import log
from .fusion import Weights, derived
from .prosody import Baseline, Prosody, ProsodyTracker, measure, relative
from .words import STATES, word_features

logger = log.get(__name__)

#: the audio kept from before a voice starts (the listener keeps as much)
PREROLL_S = 0.3
#: below this confidence a score is kept in the timeline but raises no event
MIN_CONFIDENCE = 0.2
#: a state announced falls this far under its threshold before it is over
HYSTERESIS = 0.15
#: an announced state is announced again when it grows this much stronger
RISE = 0.15
#: an utterance this long gets events before its end (a long complaint)
LONG_UTTERANCE_S = 5.0
DEFAULT_THRESHOLD = 0.6


@dataclass(frozen=True)
class Emotion:
    """A state the caller is in: ``type`` (frustrated, confused, urgent,
    satisfied), ``intensity`` (its score, 0..1), ``confidence`` (how much
    there was to go on, 0..1), the utterance, and the cues heard."""

    type: str
    intensity: float
    confidence: float
    turn: int
    at: float  # seconds into the call
    text: str = ""
    cues: tuple[str, ...] = ()
    #: announced again because it grew stronger
    rising: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "intensity": round(self.intensity, 3),
            "confidence": round(self.confidence, 3),
            "turn": self.turn,
            "at": round(self.at, 2),
            "text": self.text,
            "cues": list(self.cues),
            "rising": self.rising,
        }


@dataclass(frozen=True)
class Reading:
    turn: int
    text: str
    scores: dict[str, float]
    confidence: float
    features: dict[str, float]
    cues: tuple[str, ...]
    final: bool
    duration_s: float
    #: how long scoring took (the prosody was measured while the caller spoke)
    ms: float


def _words_per_s(prosody: Prosody, text: str) -> float | None:
    """The caller's pace: words a second of speech (None: too little to tell)."""
    words = len(text.split())
    return words / prosody.active_s if prosody.active_s >= 0.3 and words else None


@cache
def shipped_weights() -> Weights:
    """The fitted weights the package ships (read once per process)."""
    return Weights.load()


@dataclass
class _State:
    active: bool = False
    announced: float = 0.0


class EmotionReader:
    """``thresholds`` per state override the shipped ones; ``now`` is the
    call's clock (event times are seconds since the reader was made)."""

    def __init__(
        self,
        rate: int,
        weights: Weights | None = None,
        thresholds: dict[str, float] | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.weights = weights or shipped_weights()
        self.thresholds = dict(thresholds or {})
        self.now = now
        self.started = now()
        self.prosody = ProsodyTracker(self.rate)
        self.baseline = Baseline()
        self._ring: collections.deque[bytes] = collections.deque()
        self._ring_bytes = 0
        self._turn: int | None = None
        self._audio_s = 0.0
        self._closed: collections.OrderedDict[int, Prosody] = collections.OrderedDict()
        self._said: list[str] = []
        self._states = {s: _State() for s in STATES}
        self.timeline: list[dict[str, Any]] = []
        #: the timeline's entry the last commit added (None: it added none)
        self.last_entry: dict[str, Any] | None = None
        self.events: list[Emotion] = []
        for state in STATES:
            self.thresholds.setdefault(state, self.weights.thresholds.get(state, DEFAULT_THRESHOLD))

    # ---------------------------------------------------------- audio
    def follow(self, pcm: bytes, speaking: bool, turn: int) -> None:
        """Caller audio as the listener saw it: ``speaking`` while utterance
        ``turn`` is under way (a cue, speech, a pause), not between turns."""
        if speaking:
            if self._turn != turn:
                self._close()
                self._turn = turn
                self.prosody.begin(self._audio_s - self._ring_bytes / 2 / self.rate)
                for chunk in self._ring:
                    self.prosody.feed(chunk)
            self.prosody.feed(pcm)
        else:
            self._close()
            self._ring.append(pcm)
            self._ring_bytes += len(pcm)
            while self._ring and self._ring_bytes - len(self._ring[0]) >= PREROLL_S * self.rate * 2:
                self._ring_bytes -= len(self._ring.popleft())
        self._audio_s += len(pcm) / 2 / self.rate

    def _close(self) -> None:
        if self._turn is None:
            return
        self._closed[self._turn] = self.prosody.measure()
        while len(self._closed) > 4:
            self._closed.popitem(last=False)
        self._turn = None
        self._ring.clear()
        self._ring_bytes = 0
        self.prosody.begin(self._audio_s)

    def _prosody_of(self, turn: int) -> Prosody:
        if turn in self._closed:
            return self._closed[turn]
        return self.prosody.measure() if self._turn == turn else measure([])

    # ---------------------------------------------------------- scoring
    def read(self, turn: int, text: str, final: bool = True) -> Reading:
        """Score utterance ``turn`` with its transcript so far."""
        t0 = time.perf_counter()
        prosody = self._prosody_of(turn)
        words = len(text.split())
        rate = _words_per_s(prosody, text)
        ref = self.baseline.reference(prosody, rate)
        features = relative(prosody, ref, rate)
        said, notes = word_features(text, self._said)
        features = derived({**features, **said})
        scores = self.weights.scores(features)
        if prosody.empty and not words:
            scores = {s: 0.0 for s in STATES}
        word_conf = min(1.0, words / 5)
        voice_conf = min(1.0, prosody.voiced_s / 1.0) * (0.4 + 0.6 * self.baseline.fill)
        confidence = 0.5 * word_conf + 0.5 * voice_conf
        return Reading(
            turn=turn,
            text=text,
            scores=scores,
            confidence=confidence,
            features=features,
            cues=tuple(notes),
            final=final,
            duration_s=prosody.duration_s,
            ms=(time.perf_counter() - t0) * 1000,
        )

    def would_announce(self, reading: Reading) -> list[str]:
        """The states :meth:`commit` would announce for ``reading`` (without
        committing it: a reply prepared at a pause can be steered by them)."""
        return [e for e, _rising in self._crossings(reading)]

    def _crossings(self, reading: Reading) -> list[tuple[str, bool]]:
        out: list[tuple[str, bool]] = []
        if reading.confidence < MIN_CONFIDENCE:
            return out
        for state in STATES:
            p, st, threshold = reading.scores[state], self._states[state], self.thresholds[state]
            if not st.active and p >= threshold:
                out.append((state, False))
            elif st.active and st.announced + RISE <= 1.0 and p >= st.announced + RISE:
                out.append((state, True))
        return out

    def seconds_in(self) -> float:
        """Seconds since the reader started (the call's start): an emotion's ``at``."""
        return round(self.now() - self.started, 2)

    def commit(self, reading: Reading) -> list[Emotion]:
        """Take ``reading`` into the call's record; the states it announces.
        A provisional reading (the caller still talking) counts only in a
        long utterance."""
        self.last_entry = None
        if not reading.final and reading.duration_s < LONG_UTTERANCE_S:
            return []
        at = self.seconds_in()
        out = []
        for state, rising in self._crossings(reading):
            p = reading.scores[state]
            self._states[state].active = True
            self._states[state].announced = p
            cues = tuple(c for c in reading.cues if c.startswith(state) or c.startswith("rep"))
            out.append(
                Emotion(state, p, reading.confidence, reading.turn, at, reading.text, cues, rising)
            )
        for state in STATES:
            st = self._states[state]
            if st.active and reading.scores[state] < self.thresholds[state] - HYSTERESIS:
                st.active = False
                st.announced = 0.0
        if reading.final:
            prosody = self._prosody_of(reading.turn)
            self.baseline.add(prosody, _words_per_s(prosody, reading.text))
            self._said.append(reading.text)
            del self._said[:-6]
        self.events += out
        self.timeline.append(
            {
                "t": round(at, 2),
                "turn": reading.turn,
                "text": reading.text,
                "final": reading.final,
                "scores": {s: round(v, 3) for s, v in reading.scores.items()},
                "confidence": round(reading.confidence, 3),
                "cues": list(reading.cues),
                "announced": [e.type for e in out],
            }
        )
        self.last_entry = self.timeline[-1]
        del self.timeline[:-500]
        for e in out:
            logger.info(
                log.kv(
                    event="emotion_detected",
                    type=e.type,
                    intensity=round(e.intensity, 2),
                    confidence=round(e.confidence, 2),
                    rising=e.rising,
                )
            )
        return out

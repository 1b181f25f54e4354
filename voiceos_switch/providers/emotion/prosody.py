"""How the caller says it: pitch, loudness, pace and pauses, per utterance,
measured against the caller's own voice.

:class:`ProsodyTracker` is fed the caller's audio while they speak (the
turn loop feeds it from the first frame of an utterance, with a little
audio from before it, to the end of the turn) and keeps one hop every
10 ms: pitch (YIN, :mod:`voiceos_switch.audio.pitch`) and level. Almost all
the work is done while the caller talks; what is left when the turn ends
is a few percentiles over the utterance's hops.

Everything is measured relative to a :class:`Baseline` of the same caller:
their median pitch and level over their first seconds of speech. A caller
with a naturally loud or high voice is then at zero, not "aroused"; only a
change from how this caller usually speaks counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...audio.pitch import HOP_S, PitchTracker

#: the caller's first seconds of voiced speech make their baseline
BASELINE_VOICED_S = 3.0
#: the end of an utterance whose pitch movement tells a question
FINAL_S = 0.3
#: pitch estimates further than this from the utterance's median are octave errors
FOLD_ST = 7.0
#: the pitch range is measured between these percentiles (robust to stray hops)
RANGE_LOW = 15
#: the percentile of speech hops' levels that is the speaking level
LEVEL_PERCENTILE = 80
#: hops this far under the utterance's loud hops are silence (a pause)
PAUSE_BELOW_DB = 25.0
#: a pause inside an utterance is at least this long
PAUSE_MIN_S = 0.15


@dataclass
class _Hop:
    t: float  # seconds into the stream
    f0: float | None
    level: float


@dataclass(frozen=True)
class Prosody:
    """One utterance, in absolute terms (Hz, dBFS, seconds)."""

    duration_s: float
    voiced_s: float
    active_s: float  # hops loud enough to be speech, voiced or not
    f0_median: float | None
    f0_p10: float | None
    f0_p90: float | None
    #: pitch movement over the utterance, semitones a second
    f0_slope: float
    #: the last voiced stretch against the utterance's median, semitones
    final_rise: float
    #: the speaking level: the louder part of the speech hops (dBFS)
    level: float
    level_std: float
    #: share of the utterance spent in pauses of PAUSE_MIN_S and longer
    pause_ratio: float
    #: the utterance's voiced pitch (semitones over 100 Hz) and its speech
    #: hops' levels, for the baseline
    voiced_st: tuple[float, ...] = ()
    levels: tuple[float, ...] = ()

    @property
    def empty(self) -> bool:
        return self.active_s <= 0.0


def _st(f0: float) -> float:
    return 12 * math.log2(f0 / 100.0)


def _fold(st: np.ndarray) -> np.ndarray:
    """Estimates an octave off the utterance's median (the tracker's
    octave errors on band-limited speech) are moved back by the octave: a
    voice does not leap seven semitones from its median and back."""
    median = float(np.median(st))
    st = np.where(st - median > FOLD_ST, st - 12, st)
    return np.where(st - median < -FOLD_ST, st + 12, st)


class ProsodyTracker:
    """One call's caller audio, hop by hop, for the utterance under way."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self._pitch = PitchTracker(sample_rate)
        self._hops: list[_Hop] = []
        self._t0 = 0.0  # stream time of the tracker's first hop in this utterance
        self.hops_analysed = 0

    def begin(self, at_s: float) -> None:
        """A new utterance starts with the audio fed next (at ``at_s`` into
        the stream); the pitch tracker keeps its memory of the caller's
        recent pitch (it folds octave errors back with it)."""
        self._pitch.restart()
        self._hops = []
        self._t0 = at_s

    def feed(self, pcm: bytes) -> None:
        for frame in self._pitch.feed(pcm):
            self._hops.append(_Hop(self._t0 + frame.t, frame.f0, frame.level_db))
        self.hops_analysed = len(self._hops)

    def measure(self) -> Prosody:
        """The utterance so far."""
        return measure(self._hops)


def measure(hops: list[_Hop]) -> Prosody:
    if not hops:
        return Prosody(0.0, 0.0, 0.0, None, None, None, 0.0, 0.0, -96.0, 0.0, 0.0)
    levels = np.array([h.level for h in hops])
    loud = float(np.percentile(levels, 95))
    active = levels >= loud - PAUSE_BELOW_DB
    idx = np.flatnonzero(active)
    first, last = (int(idx[0]), int(idx[-1])) if len(idx) else (0, -1)
    span = hops[first : last + 1]
    span_active = active[first : last + 1]
    voiced = [h for h in span if h.f0 is not None]
    speech_levels = levels[first : last + 1][span_active]
    duration = len(span) * HOP_S
    f0_median: float | None
    f0_p10: float | None
    f0_p90: float | None
    if len(voiced) >= 5:
        st = _fold(np.array([_st(h.f0) for h in voiced if h.f0 is not None]))
        ts = np.array([h.t for h in voiced])
        median_st = float(np.median(st))
        f0_median = 100.0 * 2 ** (median_st / 12)
        f0_p10 = 100.0 * 2 ** (float(np.percentile(st, RANGE_LOW)) / 12)
        f0_p90 = 100.0 * 2 ** (float(np.percentile(st, 100 - RANGE_LOW)) / 12)
        slope = float(np.polyfit(ts - ts[0], st, 1)[0]) if ts[-1] - ts[0] > 0.2 else 0.0
        tail = st[ts >= ts[-1] - FINAL_S]
        final = float(np.median(tail)) - median_st if len(tail) >= 3 else 0.0
    else:
        st = np.zeros(0)
        f0_median = f0_p10 = f0_p90 = None
        slope = final = 0.0
    pauses = 0
    run = 0
    for a in span_active:
        if a:
            if run * HOP_S >= PAUSE_MIN_S:
                pauses += run
            run = 0
        else:
            run += 1
    return Prosody(
        duration_s=duration,
        voiced_s=len(voiced) * HOP_S,
        active_s=float(np.sum(span_active)) * HOP_S,
        f0_median=f0_median,
        f0_p10=f0_p10,
        f0_p90=f0_p90,
        f0_slope=max(-40.0, min(40.0, slope)),
        final_rise=max(-12.0, min(12.0, final)),
        level=speaking_level(speech_levels),
        level_std=float(np.std(speech_levels)) if len(speech_levels) > 1 else 0.0,
        pause_ratio=pauses * HOP_S / duration if duration > 0 else 0.0,
        voiced_st=tuple(float(x) for x in st),
        levels=tuple(float(x) for x in speech_levels) if len(voiced) >= 5 else (),
    )


def speaking_level(levels: np.ndarray | list[float]) -> float:
    """How loud someone speaks: the 80th percentile of their speech hops'
    levels (the syllables' peaks, not the troughs between them, which
    depend on how far a voice carries over the noise)."""
    return float(np.percentile(levels, LEVEL_PERCENTILE)) if len(levels) else -96.0


class Baseline:
    """How this caller usually speaks: from their first seconds of voiced
    speech (then frozen, so a caller who grows angry is not re-calibrated
    to their anger). Until it is full, the utterance being scored counts
    towards it, so the first words are measured against themselves."""

    def __init__(self, voiced_s: float = BASELINE_VOICED_S) -> None:
        self.want = int(voiced_s / HOP_S)
        self._st: list[float] = []
        self._levels: list[float] = []
        self._rates: list[float] = []

    @property
    def fill(self) -> float:
        """How complete the baseline is, 0..1."""
        return min(1.0, len(self._st) / self.want)

    def add(self, prosody: Prosody, words_per_s: float | None) -> None:
        if self.fill >= 1.0:
            return
        room = self.want - len(self._st)
        self._st += list(prosody.voiced_st[:room])
        self._levels += list(prosody.levels[: room * 2])
        if words_per_s is not None:
            self._rates.append(words_per_s)

    def reference(self, current: Prosody | None, words_per_s: float | None) -> _Reference:
        st, levels, rates = self._st, self._levels, self._rates
        if self.fill < 1.0 and current is not None:
            st = st + list(current.voiced_st)
            levels = levels + list(current.levels)
            if words_per_s is not None:
                rates = rates + [words_per_s]
        if len(st) >= 5:
            arr = _fold(np.array(st))
            median = float(np.median(arr))
            spread = float(np.percentile(arr, 100 - RANGE_LOW) - np.percentile(arr, RANGE_LOW))
        else:
            median, spread = None, None
        level = speaking_level(levels) if levels else None
        level_std = float(np.std(levels)) if len(levels) > 1 else None
        rate = float(np.median(rates)) if rates else None
        return _Reference(median, spread, level, level_std, rate)


@dataclass(frozen=True)
class _Reference:
    pitch_st: float | None  # semitones over 100 Hz
    pitch_spread_st: float | None
    level_db: float | None
    level_std_db: float | None
    words_per_s: float | None


def relative(p: Prosody, ref: _Reference, words_per_s: float | None) -> dict[str, float]:
    """The utterance's prosodic features against the caller's reference."""
    out = {
        "pitch_st": 0.0,
        "pitch_range_st": 0.0,
        "pitch_slope": p.f0_slope,
        "final_rise": p.final_rise,
        "level_db": 0.0,
        "level_var_db": 0.0,
        "rate": 0.0,
        "pause_ratio": p.pause_ratio,
    }
    if p.f0_median is not None and ref.pitch_st is not None:
        # within an octave: the tracker may hold one utterance an octave off
        # the baseline (band-limited speech), a caller's median seldom moves
        # half an octave
        out["pitch_st"] = (_st(p.f0_median) - ref.pitch_st + 6) % 12 - 6
        if p.f0_p10 is not None and p.f0_p90 is not None and ref.pitch_spread_st is not None:
            out["pitch_range_st"] = (_st(p.f0_p90) - _st(p.f0_p10)) - ref.pitch_spread_st
    if ref.level_db is not None and p.level > -96.0:
        out["level_db"] = p.level - ref.level_db
    if ref.level_std_db is not None:
        out["level_var_db"] = p.level_std - ref.level_std_db
    if words_per_s is not None and ref.words_per_s:
        out["rate"] = math.log2(max(0.25, words_per_s) / max(0.25, ref.words_per_s))
    return {k: max(-24.0, min(24.0, v)) for k, v in out.items()}

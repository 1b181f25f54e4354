"""The caller's pitch, frame by frame, as they speak (YIN).

YIN finds the period of a voice from how well the signal matches itself
shifted by each candidate lag (the cumulative mean normalised difference),
not from energy at the fundamental. That matters on the telephone: the
network removes everything below 300 Hz, so a man's fundamental (85-180 Hz)
is not in the signal at all, yet its period still is, in the spacing of the
harmonics that remain.

:class:`PitchTracker` is fed audio in any chunk sizes (20 ms frames as they
arrive) and returns one estimate per 10 ms hop: the fundamental in Hz, or
None where the frame is unvoiced or too quiet to tell. Everything is numpy:
about 0.07 ms per hop, 7 ms per second of 8 kHz audio, on two cores.
Estimates two or three times the caller's recent pitch, where the whole
period also fits, are folded back (band-limited speech often matches
itself at a fraction of its period).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: the pitch range of adult voices (a child's or a very high voice tops out
#: below 400 Hz in running speech)
F0_MIN_HZ = 70.0
F0_MAX_HZ = 400.0
HOP_S = 0.01
#: the stretch of signal each lag is compared over
WINDOW_S = 0.025
#: below this cumulative-mean-normalised difference a lag is a period
THRESHOLD = 0.15
#: above this at its best lag a frame is unvoiced
UNVOICED = 0.35
#: frames quieter than this (dBFS) are not looked at
MIN_LEVEL_DB = -50.0
#: voiced estimates the octave check compares with
RECENT = 24


@dataclass(frozen=True)
class PitchFrame:
    """One hop: when (seconds into what was fed), the pitch (None:
    unvoiced or silent), how clearly periodic the frame was (0..1) and its
    level in dBFS."""

    t: float
    f0: float | None
    clarity: float
    level_db: float


class PitchTracker:
    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self.hop = int(round(HOP_S * sample_rate))
        self.window = int(round(WINDOW_S * sample_rate))
        self.tau_min = max(2, int(sample_rate / F0_MAX_HZ))
        self.tau_max = int(math.ceil(sample_rate / F0_MIN_HZ))
        self._need = self.window + self.tau_max + 1
        self._buf = np.zeros(0, dtype=np.float64)
        self._frames = 0  # hops emitted so far
        self._recent: list[float] = []  # the last voiced estimates

    def restart(self) -> None:
        """Start over on audio that does not follow what was fed (the next
        utterance); the caller's recent pitch is kept for the octave check,
        and hop times count from zero again."""
        self._buf = np.zeros(0, dtype=np.float64)
        self._frames = 0

    def feed(self, pcm: bytes) -> list[PitchFrame]:
        """PCM16 mono at the tracker's rate; the hops it completes."""
        if pcm:
            x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64) / 32768
            self._buf = np.concatenate([self._buf, x])
        out: list[PitchFrame] = []
        while len(self._buf) >= self._need:
            out.append(self._analyse(self._buf[: self._need]))
            self._buf = self._buf[self.hop :]
        return out

    def _analyse(self, x: np.ndarray) -> PitchFrame:
        t = self._frames * HOP_S
        self._frames += 1
        frame = x[: self.window]
        level = 10 * math.log10(float(np.mean(frame**2)) + 1e-12)
        if level < MIN_LEVEL_DB:
            return PitchFrame(t, None, 0.0, level)
        x = x - float(np.mean(x))
        w, tau_max = self.window, self.tau_max
        # d(tau) = sum (x_j - x_{j+tau})^2 over the window, for every lag at once
        head = x[:w]
        energy_head = float(np.dot(head, head))
        sq = np.concatenate([[0.0], np.cumsum(x**2)])
        taus = np.arange(1, tau_max + 1)
        energy_lag = sq[taus + w] - sq[taus]
        n = 1 << int(math.ceil(math.log2(w + tau_max + 1)))
        spec_x = np.fft.rfft(x[: w + tau_max], n)
        spec_h = np.fft.rfft(head, n)
        cross = np.fft.irfft(spec_x * np.conj(spec_h), n)[1 : tau_max + 1]
        d = energy_head + energy_lag - 2 * cross
        d = np.maximum(d, 0.0)
        cum = np.cumsum(d)
        cmnd = d * taus / np.where(cum > 0, cum, 1.0)
        lo = self.tau_min - 1  # index of tau_min
        region = cmnd[lo:]
        below = np.flatnonzero(region < THRESHOLD)
        if len(below):
            i = int(below[0])
            while i + 1 < len(region) and region[i + 1] < region[i]:
                i += 1  # down to the bottom of this dip
        else:
            i = int(np.argmin(region))
        best = float(region[i])
        clarity = max(0.0, 1.0 - best)
        if best > UNVOICED:
            return PitchFrame(t, None, clarity, level)
        k = lo + i  # index into cmnd; lag = k + 1
        lag = float(k + 1)
        if 0 < k < len(cmnd) - 1:
            a, b, c = cmnd[k - 1], cmnd[k], cmnd[k + 1]
            denom = a - 2 * b + c
            if denom > 0:
                lag += 0.5 * (a - c) / denom
        lag = self._continuous(lag, cmnd)
        f0 = self.rate / lag
        if not F0_MIN_HZ <= f0 <= F0_MAX_HZ:
            return PitchFrame(t, None, clarity, level)
        self._recent = [*self._recent[-(RECENT - 1) :], f0]
        return PitchFrame(t, f0, clarity, level)

    def _continuous(self, lag: float, cmnd: np.ndarray) -> float:
        """Band-limited speech often matches itself best at a third or a half
        of its period (the harmonics that survive the phone line dominate):
        an estimate two or three times the caller's recent pitch, where the
        whole period also fits, is taken as that period."""
        if len(self._recent) < RECENT // 2:
            return lag
        recent = float(np.median(self._recent))
        f0 = self.rate / lag
        for k in (2, 3):
            longer = lag * k
            if abs(f0 / recent - k) < 0.2 * k and longer <= self.tau_max:
                if cmnd[int(round(longer)) - 1] < UNVOICED:
                    return longer
        return lag


def semitones(f0: float, reference: float) -> float:
    """How far ``f0`` is above ``reference`` (negative: below), in semitones."""
    return 12 * math.log2(f0 / reference)

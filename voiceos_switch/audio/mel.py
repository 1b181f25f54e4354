"""Whisper-style log-mel spectrogram of 16 kHz audio, in numpy.

The definition the Whisper family of encoders expects:

- frames of ``N_FFT`` = 400 samples every ``HOP`` = 160 (10 ms), the signal
  reflect-padded by half a frame at both ends so frame ``i`` is centred on
  sample ``i * HOP``;
- a periodic Hann window, the power spectrum of a 400-point real FFT
  (201 bins, 0-8000 Hz);
- 80 triangular mel filters on the Slaney mel scale (linear below 1 kHz,
  logarithmic above), each scaled to unit area (``2 / bandwidth``);
- ``log10(max(mel, 1e-10))``, the last frame dropped (``n / HOP`` frames for
  ``n`` samples), floored at 8 decades below the loudest value, then
  ``(x + 4) / 4``.

Everything that does not depend on the audio (window, filterbank) is built
once, and the working arrays are reused from call to call; a call is one
strided view, one batched FFT and a sparse filterbank (about 2 ms for 8 s).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
LOG_FLOOR = 1e-10
DYNAMIC_RANGE = 8.0  # decades kept below the loudest value


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (the DFT-even one used for spectral analysis)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


# Slaney's mel scale: linear (3 mels per 200 Hz) up to 1 kHz, then logarithmic
# with 27 mels per factor of 6.4 in frequency.
_F_SP = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _BREAK_MEL + np.log(np.maximum(hz, _BREAK_HZ) / _BREAK_HZ) / _LOGSTEP
    return np.where(hz >= _BREAK_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log = _BREAK_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _BREAK_MEL) - _BREAK_MEL))
    return np.where(mel >= _BREAK_MEL, log, linear)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = N_MELS,
    f_min: float = 0.0,
    f_max: float | None = None,
) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters, each of unit area."""
    f_max = sample_rate / 2 if f_max is None else f_max
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(
        np.linspace(hz_to_mel(np.array(f_min)), hz_to_mel(np.array(f_max)), n_mels + 2)
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    tri = np.maximum(0.0, np.minimum(rising, falling))
    filters: np.ndarray = tri * (2.0 / (upper - lower))
    return filters


@lru_cache(maxsize=4)
def _constants(sample_rate: int, n_fft: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    window = hann_window(n_fft)
    filters = mel_filterbank(sample_rate, n_fft, n_mels)
    window.setflags(write=False)
    filters.setflags(write=False)
    return window, filters


class SparseFilterbank:
    """A filterbank applied without a BLAS matrix product.

    Each triangular filter covers a few neighbouring bins and overlaps only
    its two neighbours, so the filters fall into a couple of families whose
    supports are disjoint (even and odd filters, for mel). One family is then
    a single weighted sum over consecutive runs of bins (``np.add.reduceat``).
    A BLAS product of this size (80 x 201 x 800) fans out to BLAS's threads,
    and on a machine whose cores are busy that waits several times longer
    than the arithmetic takes; this stays on the calling thread.
    """

    def __init__(self, filters: np.ndarray) -> None:
        self.n_filters, self.n_bins = filters.shape
        members: list[list[int]] = []
        ends: list[int] = []
        supports: dict[int, tuple[int, int]] = {}
        for m in range(self.n_filters):
            nonzero = np.flatnonzero(filters[m])
            if not len(nonzero):
                continue  # an empty filter: its output stays 0
            lo, hi = int(nonzero[0]), int(nonzero[-1]) + 1
            supports[m] = (lo, hi)
            for f, end in enumerate(ends):
                if end <= lo:
                    members[f].append(m)
                    ends[f] = hi
                    break
            else:
                members.append([m])
                ends.append(hi)
        self.families: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for family in members:
            weights = np.zeros(self.n_bins)
            for m in family:
                lo, hi = supports[m]
                weights[lo:hi] = filters[m, lo:hi]
            starts = np.array([supports[m][0] for m in family], dtype=np.intp)
            self.families.append((np.array(family, dtype=np.intp), weights, starts))

    def apply(self, power: np.ndarray, work: np.ndarray, out: np.ndarray) -> None:
        """``out[n_filters, frames] = filters @ power.T`` for ``power[frames, bins]``
        (``work`` is scratch of ``power``'s shape)."""
        out[:] = 0.0
        for family, weights, starts in self.families:
            np.multiply(power, weights, out=work)
            out[family, :] = np.add.reduceat(work, starts, axis=1).T


@lru_cache(maxsize=4)
def _filterbank(n_mels: int) -> SparseFilterbank:
    return SparseFilterbank(_constants(SAMPLE_RATE, N_FFT, n_mels)[1])


class LogMel:
    """The log-mel of one length of audio at a time, into buffers it keeps.

    Fresh multi-megabyte arrays on every call cost more in page faults than
    the FFT itself, so the padded signal, the frames, the spectrum and the
    power live here and are reused while the length stays the same (the turn
    model always asks for 8 s). One instance per thread: it is not safe to
    share between threads.
    """

    def __init__(self, n_mels: int = N_MELS) -> None:
        self.n_mels = n_mels
        self._window, _ = _constants(SAMPLE_RATE, N_FFT, n_mels)
        self._filterbank = _filterbank(n_mels)
        self._samples = -1

    def _buffers(self, samples: int) -> None:
        if samples == self._samples:
            return
        half = N_FFT // 2
        frames = 1 + samples // HOP
        bins = N_FFT // 2 + 1
        self._padded = np.empty(samples + 2 * half)
        self._frames = np.empty((frames, N_FFT))
        self._spectrum = np.empty((frames, bins), dtype=np.complex128)
        self._work = np.empty((frames, bins))
        self._power = np.empty((frames, bins))
        self._mel = np.empty((self.n_mels, frames))
        self._samples = samples

    def power(self, audio: np.ndarray) -> np.ndarray:
        """``[1 + n // HOP, N_FFT // 2 + 1]`` power of centred, windowed frames
        (this object's buffer, overwritten by the next call)."""
        x = np.asarray(audio)
        if x.ndim != 1:
            raise ValueError(f"expected mono audio (1-D), got shape {x.shape}")
        half = N_FFT // 2
        if len(x) <= half:  # too short to reflect: zeros up to one frame
            x = np.pad(x, (0, half + 1 - len(x)))
        n = len(x)
        self._buffers(n)
        padded = self._padded
        padded[half : half + n] = x
        # reflections about the first and last samples (which are not repeated)
        padded[:half] = x[half:0:-1]
        padded[half + n :] = x[n - 2 : n - 2 - half : -1] if n - 2 - half >= 0 else x[n - 2 :: -1]
        np.multiply(sliding_window_view(padded, N_FFT)[::HOP], self._window, out=self._frames)
        np.fft.rfft(self._frames, axis=1, out=self._spectrum)
        spectrum = self._spectrum
        np.multiply(spectrum.real, spectrum.real, out=self._power)
        np.multiply(spectrum.imag, spectrum.imag, out=self._work)
        self._power += self._work
        return self._power

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """``[n_mels, len(audio) // HOP]`` float32 log-mel of 16 kHz audio."""
        n_frames = len(audio) // HOP
        if n_frames == 0:
            return np.zeros((self.n_mels, 0), dtype=np.float32)
        power = self.power(audio)
        self._filterbank.apply(power, self._work, self._mel)
        mel = self._mel[:, :n_frames]
        np.maximum(mel, LOG_FLOOR, out=mel)
        np.log10(mel, out=mel)
        np.maximum(mel, mel.max() - DYNAMIC_RANGE, out=mel)
        out = np.empty(mel.shape, dtype=np.float32)
        np.add(mel, 4.0, out=out, casting="same_kind")
        out *= 0.25
        return out


_local = threading.local()


def log_mel_spectrogram(audio: np.ndarray) -> np.ndarray:
    """``[N_MELS, len(audio) // HOP]`` float32 Whisper log-mel of 16 kHz audio."""
    mel: LogMel | None = getattr(_local, "log_mel", None)
    if mel is None:
        mel = _local.log_mel = LogMel()
    return mel(audio)

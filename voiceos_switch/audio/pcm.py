"""Signed 16-bit little-endian mono PCM: the one format inside the bridge."""

from __future__ import annotations

import numpy as np
import soxr

FRAME_MS = 20
SAMPLE_WIDTH = 2


def frame_bytes(sample_rate: int, ms: int = FRAME_MS) -> int:
    """Bytes in one frame of ``ms`` milliseconds at ``sample_rate``."""
    return sample_rate * ms // 1000 * SAMPLE_WIDTH


def silence(sample_rate: int, ms: int = FRAME_MS) -> bytes:
    return bytes(frame_bytes(sample_rate, ms))


def resample(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """High-quality resampling of a whole buffer (soxr)."""
    if src_rate == dst_rate or not pcm:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    out = soxr.resample(samples, src_rate, dst_rate, quality="HQ")
    return np.asarray(out, dtype="<i2").tobytes()


class StreamResampler:
    """Resampler that keeps filter state across chunks of one stream."""

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self.src_rate = src_rate
        self.dst_rate = dst_rate
        self._rs = (
            None
            if src_rate == dst_rate
            else soxr.ResampleStream(src_rate, dst_rate, 1, dtype="int16", quality="HQ")
        )

    def process(self, pcm: bytes, last: bool = False) -> bytes:
        if self._rs is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        return np.asarray(self._rs.resample_chunk(samples, last=last), dtype="<i2").tobytes()


def rms(pcm: bytes) -> float:
    if len(pcm) < 2:
        return 0.0
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def tone(freqs: tuple[float, ...], ms: int, sample_rate: int, level: float = 0.3) -> bytes:
    """A sum of sine waves, ``level`` of full scale, with 5 ms fades."""
    n = sample_rate * ms // 1000
    t = np.arange(n) / sample_rate
    wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) / max(len(freqs), 1)
    ramp = min(n // 2, sample_rate * 5 // 1000)
    if ramp:
        env = np.ones(n)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        wave = wave * env
    return (np.asarray(wave) * level * 32767).astype("<i2").tobytes()

"""A telephone channel in numbers: band-limit to 300-3400 Hz and G.711 mu-law."""

from __future__ import annotations

import numpy as np


def mulaw_round_trip(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    mu = 255.0
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round(y * 127) / 127  # 8 bits
    out = np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu
    return (np.clip(out, -1, 1) * 32767).astype("<i2").tobytes()


def band_limit(pcm: bytes, rate: int, low: float = 300.0, high: float = 3400.0) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    spec[(freqs < low) | (freqs > high)] = 0
    return np.clip(np.fft.irfft(spec, len(x)), -32768, 32767).astype("<i2").tobytes()


def phone_channel(pcm: bytes, rate: int = 8000) -> bytes:
    return mulaw_round_trip(band_limit(pcm, rate))

"""Checks on recorded audio that a listener would make, done with numbers."""

from __future__ import annotations

import numpy as np


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)


def find(haystack: bytes, needle: bytes) -> tuple[float, float]:
    """Where ``needle`` best occurs in ``haystack``: (offset in samples,
    normalised cross-correlation 0..1). 1.0 is a bit-exact copy; a G.711
    round trip of speech scores above 0.9; unrelated speech below 0.3."""
    h, n = samples(haystack), samples(needle)
    if len(n) == 0 or len(h) < len(n):
        return 0.0, 0.0
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[
        : len(h) - len(n) + 1
    ]
    energy = np.concatenate(([0.0], np.cumsum(h * h)))
    window = energy[len(n) :] - energy[: len(h) - len(n) + 1]
    denom = np.sqrt(np.maximum(window, 1e-9) * float(np.dot(n, n)))
    score = np.abs(corr) / denom
    score[window < 1e-3 * float(np.dot(n, n))] = 0.0  # ignore near-silent windows
    best = int(np.argmax(score))
    return float(best), float(score[best])


def windows(pcm: bytes, rate: int) -> np.ndarray:
    """The samples as rows of 20 ms windows (a trailing partial one dropped)."""
    s = samples(pcm)
    step = rate // 50
    n = len(s) // step
    return s[: n * step].reshape(n, step)


def active_seconds(pcm: bytes, rate: int, threshold: float = 300.0) -> float:
    """Seconds of 20 ms windows louder than ``threshold`` RMS."""
    frames = windows(pcm, rate)
    if len(frames) == 0:
        return 0.0
    rms = np.sqrt((frames * frames).mean(axis=1))
    return float((rms > threshold).sum()) * 0.02


def tone_seconds(pcm: bytes, rate: int, freq: float, min_ratio: float = 0.5) -> float:
    """Seconds where ``freq`` carries most of a 20 ms window's energy."""
    frames = windows(pcm, rate)
    if len(frames) == 0:
        return 0.0
    step = frames.shape[1]
    t = np.arange(step) / rate
    ref = np.exp(-2j * np.pi * freq * t)
    power = np.abs(frames @ ref) ** 2 * 2 / step
    total = (frames * frames).sum(axis=1) + 1e-9
    loud = np.sqrt((frames * frames).mean(axis=1)) > 100
    return float(((power / total > min_ratio) & loud).sum()) * 0.02


def envelope(pcm: bytes, rate: int, hop_ms: int = 10) -> np.ndarray:
    """Log energy per ``hop_ms`` window: the rhythm of speech, robust to codecs."""
    s = samples(pcm)
    step = rate * hop_ms // 1000
    n = len(s) // step
    frames = s[: n * step].reshape(n, step)
    return np.log10((frames * frames).mean(axis=1) + 100.0)


def envelope_find(haystack: bytes, needle: bytes, rate: int) -> tuple[float, float]:
    """Best Pearson correlation of ``needle``'s energy envelope inside
    ``haystack``'s: (offset in seconds, correlation). The same utterance
    scores above 0.9 even through G.711 and small timing changes; different
    sentences of the same voice score well below."""
    h, n = envelope(haystack, rate), envelope(needle, rate)
    if len(n) < 2 or len(h) < len(n):
        return 0.0, 0.0
    n = (n - n.mean()) / (n.std() + 1e-9)
    best, at = -1.0, 0
    for i in range(len(h) - len(n) + 1):
        w = h[i : i + len(n)]
        sd = w.std()
        if sd < 1e-6:
            continue
        r = float(np.dot((w - w.mean()) / sd, n) / len(n))
        if r > best:
            best, at = r, i
    return at * 0.01, best


def utterances(pcm: bytes, rate: int, gap_s: float = 0.6) -> list[tuple[int, int]]:
    """Byte ranges of the stretches of sound separated by gap_s of quiet."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    step = rate // 50
    n = len(x) // step
    loud = np.sqrt((x[: n * step].reshape(n, step) ** 2).mean(axis=1)) > 300
    spans: list[tuple[int, int]] = []
    start = last = None
    for i, is_loud in enumerate(loud):
        if is_loud:
            if start is None or (last is not None and (i - last) * 0.02 > gap_s):
                if start is not None and last is not None:
                    spans.append((start, last + 1))
                start = i
            last = i
    if start is not None and last is not None:
        spans.append((start, last + 1))
    return [(max(0, a - 10) * step * 2, min(n, b + 10) * step * 2) for a, b in spans]


async def heard_words(pcm: bytes, rate: int) -> list[str]:
    """What a listener makes of a recording: Whisper tiny.en over each
    utterance, then over the whole (a long quiet stretch can end a decode
    early), normalised words."""
    from tests.textcheck import normalise
    from voiceos_switch.providers.stt import WhisperSTT

    stt = WhisperSTT()
    words: list[str] = []
    for start, end in utterances(pcm, rate):
        words += normalise((await stt.transcribe(pcm[start:end], rate)).text)
    return words + normalise((await stt.transcribe(pcm, rate)).text)

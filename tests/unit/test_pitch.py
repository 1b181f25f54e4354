"""The pitch tracker on what a phone line carries: a plain tone, a voice
whose fundamental the network removed, noise, and a real synthesised voice
through a telephone channel, fed in the chunk sizes calls deliver."""

from __future__ import annotations

import numpy as np
import pytest

from tests.phone import phone_channel
from tests.unit.test_conversation import speech
from voiceos_switch.audio.pitch import PitchTracker, semitones

RATE = 8000


def pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def voiced_f0(frames: list) -> np.ndarray:
    return np.array([f.f0 for f in frames if f.f0 is not None])


@pytest.mark.parametrize("f0", [90.0, 150.0, 240.0])
def test_a_steady_tone(f0: float) -> None:
    t = np.arange(RATE) / RATE
    frames = PitchTracker(RATE).feed(pcm(0.3 * np.sin(2 * np.pi * f0 * t)))
    got = voiced_f0(frames)
    assert len(got) > 0.9 * len(frames)
    assert abs(float(np.median(got)) - f0) / f0 < 0.02


def test_a_voice_without_its_fundamental_as_the_phone_network_leaves_it() -> None:
    """Harmonics 3 to 25 of 110 Hz only (330-2750 Hz): nothing at 110 Hz,
    and the period is still found."""
    t = np.arange(RATE) / RATE
    x = sum(np.sin(2 * np.pi * 110.0 * h * t) / h for h in range(3, 26))
    got = voiced_f0(PitchTracker(RATE).feed(pcm(0.2 * x / np.max(np.abs(x)))))
    assert abs(float(np.median(got)) - 110.0) / 110.0 < 0.03


def test_noise_and_silence_are_unvoiced() -> None:
    rng = np.random.default_rng(7)
    noise = PitchTracker(RATE).feed(pcm(0.2 * rng.standard_normal(RATE)))
    assert sum(f.f0 is not None for f in noise) < 0.1 * len(noise)
    silence = PitchTracker(RATE).feed(bytes(RATE * 2))
    assert all(f.f0 is None for f in silence)


def test_chunks_of_any_size_give_the_same_track() -> None:
    t = np.arange(RATE) / RATE
    audio = pcm(0.3 * np.sin(2 * np.pi * (120 + 60 * t) * t))  # a rising glide
    whole = PitchTracker(RATE).feed(audio)
    tracker, pieces = PitchTracker(RATE), []
    for i in range(0, len(audio), 322):  # odd sizes, as a transport may deliver
        pieces += tracker.feed(audio[i : i + 322])
    assert [f.f0 for f in pieces] == [f.f0 for f in whole]
    rising = voiced_f0(whole)
    assert rising[-5:].mean() > rising[:5].mean() * 1.3


async def test_a_real_voice_through_a_telephone_channel() -> None:
    """Piper's male voice: its pitch in a man's range, and the same question
    asked higher is tracked higher."""
    audio = phone_channel(await speech("What time do you open on Saturday?"))
    frames = PitchTracker(RATE).feed(audio)
    got = voiced_f0(frames)
    assert len(got) > 20
    median = float(np.median(got))
    assert 75 < median < 200, median
    # the same audio played 20 % faster is 20 % higher (3.2 semitones; the
    # voiced frames found differ a little between the two, hence the margin)
    x = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    faster = np.interp(np.arange(0, len(x), 1.2), np.arange(len(x)), x).astype("<i2").tobytes()
    higher = float(np.median(voiced_f0(PitchTracker(RATE).feed(faster))))
    assert 1.5 < semitones(higher, median) < 4.5

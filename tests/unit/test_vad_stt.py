"""The embedded listening models on 8 kHz phone-channel audio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.phone import phone_channel
from tests.textcheck import wer
from voiceos_switch.providers.stt import WhisperSTT
from voiceos_switch.providers.tts.espeak import EspeakTTS
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.providers.vad import VADStream

SENTENCES = [
    "I would like to check the status of my order.",
    "My account number is four two seven nine.",
    "Can you tell me when the store opens tomorrow?",
    "I was charged twice and I want a refund.",
]


async def phone_speech(text: str) -> bytes:
    """A natural voice (piper) through a telephone channel, as a caller sounds."""
    return phone_channel(await PiperTTS(steady=True).synthesize(text, 8000))


def speech_flags(pcm: bytes, rate: int = 8000) -> np.ndarray:
    vad = VADStream(rate)
    out = []
    step = rate // 50 * 2
    for i in range(0, len(pcm), step):
        out += [r.speech for r in vad.feed(pcm[i : i + step])]
    return np.array(out)


async def test_vad_hears_phone_speech_and_not_silence_noise_or_clipping() -> None:
    speech = await phone_speech(SENTENCES[0])
    rng = np.random.default_rng(7)
    silence = bytes(8000 * 2)
    hiss = rng.normal(0, 200, 8000 * 2).astype("<i2").tobytes()
    clipped = np.clip(rng.normal(0, 30000, 8000), -32768, 32767).astype("<i2").tobytes()
    flags = speech_flags(silence + speech + silence)
    n_sil = 1000 // 32  # windows in 1 s
    n_speech = len(speech) // 2 * 1000 // 8000 // 32
    assert not flags[: n_sil - 1].any()
    assert flags[n_sil : n_sil + n_speech].mean() > 0.8
    assert not flags[n_sil + n_speech + 10 :].any()
    assert not speech_flags(phone_channel(hiss)).any()
    assert speech_flags(clipped).mean() < 0.2


async def test_vad_at_16k_and_in_odd_chunk_sizes() -> None:
    speech = await EspeakTTS().synthesize(SENTENCES[1], 16000)
    vad = VADStream(16000)
    results = []
    for i in range(0, len(speech), 1234):
        results += vad.feed(speech[i : i + 1234])
    assert [r.end_ms for r in results] == [32 * (i + 1) for i in range(len(results))]
    assert np.mean([r.speech for r in results]) > 0.6


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    model = WhisperSTT()
    asyncio.run(model.load())
    return model


async def test_whisper_transcribes_phone_channel_speech(stt: WhisperSTT) -> None:
    errors = words = 0
    for text in SENTENCES:
        result = await stt.transcribe(await phone_speech(text), 8000)
        e, n = wer(text, result.text)
        errors, words = errors + e, words + n
        assert result.final and result.words
        starts = [w.start for w in result.words]
        assert starts == sorted(starts) and result.words[-1].end <= result.audio_s + 0.1
    assert errors / words < 0.12, f"WER {errors / words:.0%} on phone-channel speech"


async def test_whisper_returns_nothing_for_silence_and_noise(stt: WhisperSTT) -> None:
    silence = await stt.transcribe(bytes(8000 * 2 * 2), 8000)
    assert silence.text == "" or len(silence.text.split()) <= 1

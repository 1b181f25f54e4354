"""The end-of-turn model: its log-mel features against a slow reference, and
the model itself on a natural voice at 8 kHz (through a phone channel) and 16 kHz."""

from __future__ import annotations

import importlib.util
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.phone import phone_channel
from voiceos_switch.audio.mel import log_mel_spectrogram, mel_filterbank
from voiceos_switch.audio.pcm import resample, silence
from voiceos_switch.providers import turn as turn_module
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.providers.turn import (
    SmartTurn,
    TurnModelMissing,
    default_model_path,
    features,
    features_from_pcm,
)

# -- a slow reference, written from the definitions ---------------------------


def ref_hz_to_mel(f: float) -> float:
    return 3.0 * f / 200.0 if f < 1000.0 else 15.0 + 27.0 * math.log(f / 1000.0) / math.log(6.4)


def ref_mel_to_hz(m: float) -> float:
    return 200.0 * m / 3.0 if m < 15.0 else 1000.0 * math.exp((m - 15.0) * math.log(6.4) / 27.0)


def ref_filters(sr: int = 16000, n_fft: int = 400, n_mels: int = 80) -> np.ndarray:
    top = ref_hz_to_mel(sr / 2)
    edges = [ref_mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if lo < f <= mid:
                out[m, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                out[m, k] = (hi - f) / (hi - mid)
        out[m] *= 2.0 / (hi - lo)  # unit area
    return out


def ref_log_mel(x: np.ndarray) -> np.ndarray:
    """Frame by frame: centred 400-sample frames every 160, reflected at the
    edges, periodic Hann, |rfft|^2, mel, log10, 8 decades, (x + 4) / 4."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    filters = ref_filters()
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * k / 400) for k in range(400)])

    def reflect(i: int) -> int:
        while i < 0 or i >= n:
            i = -i if i < 0 else 2 * (n - 1) - i
        return i

    frames = n // 160  # one frame per 10 ms; the frame centred on the very end is dropped
    mel = np.zeros((80, frames))
    for t in range(frames):
        frame = np.array([x[reflect(t * 160 - 200 + k)] for k in range(400)])
        power = np.abs(np.fft.rfft(frame * window)) ** 2
        mel[:, t] = filters @ power
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    out: np.ndarray = (log + 4.0) / 4.0
    return out


def ref_features(audio16k: np.ndarray) -> np.ndarray:
    x = np.asarray(audio16k, dtype=np.float64)[-128000:]
    padded = np.concatenate([np.zeros(128000 - len(x)), x])  # zeros in FRONT
    padded = (padded - padded.mean()) / np.sqrt(padded.var() + 1e-7)
    return ref_log_mel(padded)


def floats(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


_speech: dict[tuple[str, int], bytes] = {}


async def voice(text: str, rate: int) -> bytes:
    """A natural voice (piper, steady): through a phone channel at 8 kHz, clean at 16 kHz."""
    if (text, rate) not in _speech:
        pcm = await PiperTTS(steady=True).synthesize(text, rate)
        _speech[text, rate] = phone_channel(pcm) if rate == 8000 else pcm
    return _speech[text, rate]


# -- features -------------------------------------------------------------------


def test_filterbank_is_slaney_mel_with_unit_area() -> None:
    ours = mel_filterbank()
    assert ours.shape == (80, 201)
    np.testing.assert_allclose(ours, ref_filters(), rtol=0, atol=1e-12)
    assert (ours > 0).sum(axis=1).min() >= 1  # no empty filter


async def test_log_mel_matches_the_slow_reference() -> None:
    speech = floats(await voice("Please send me a copy of my bill.", 16000))
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.1, 16000 * 3 + 77)
    for x in (speech, noise):
        ours = log_mel_spectrogram(x)
        assert ours.shape == (80, len(x) // 160)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, ref_log_mel(x), rtol=0, atol=1e-4)


async def test_turn_features_are_the_last_8_s_padded_at_the_front() -> None:
    speech = floats(await voice("What time do you open on Saturday?", 16000))
    secs = len(speech) / 16000
    assert 1.0 < secs < 4.0
    f = features(speech)
    assert f.shape == (80, 800) and f.dtype == np.float32
    np.testing.assert_allclose(f, ref_features(speech), rtol=0, atol=1e-4)
    # the padding is at the front (the same in every frame there: a normalised
    # constant), the speech at the right edge
    pad_frames = 800 - int(secs * 100)
    front, back = f[:, : pad_frames - 3], f[:, pad_frames + 3 :]
    assert np.ptp(front, axis=1).max() < 1e-6
    assert np.ptp(back, axis=1).min() > 0.1
    assert back.max() - front.max() > 1.0
    # longer than 8 s: only the last 8 s count
    rng = np.random.default_rng(5)
    long = np.concatenate([rng.normal(0, 0.3, 16000 * 5).astype(np.float32), speech])
    long = np.concatenate([long, speech, speech, speech])
    assert len(long) > 128000
    np.testing.assert_array_equal(features(long), features(long[-128000:]))
    np.testing.assert_allclose(features(long), ref_features(long), rtol=0, atol=1e-4)


async def test_features_are_deterministic_across_calls_and_threads() -> None:
    pcm = await voice("I lost my password.", 8000)
    first = features_from_pcm(pcm, 8000)
    with ThreadPoolExecutor(4) as pool:
        others = list(pool.map(lambda _: features_from_pcm(pcm, 8000), range(8)))
    for other in [features_from_pcm(pcm, 8000), *others]:
        np.testing.assert_array_equal(first, other)


async def test_phone_audio_is_resampled_to_16k_before_the_features() -> None:
    pcm8 = await voice("I lost my password.", 8000)
    expected = features(floats(resample(pcm8, 8000, 16000)))
    np.testing.assert_array_equal(features_from_pcm(pcm8, 8000), expected)
    # the same bytes declared as 16 kHz are a different (wrong) input
    assert np.abs(features_from_pcm(pcm8, 16000) - expected).mean() > 0.1
    # a long phone turn: only its end is resampled, with the same result
    # (to a sample or two in the last bit, which moves only near-silent bins)
    long = pcm8 * 10
    assert len(long) / 2 / 8000 > 8
    diff = np.abs(features_from_pcm(long, 8000) - features(floats(resample(long, 8000, 16000))))
    assert diff.mean() < 2e-3 and diff.max() < 0.1


def test_short_and_empty_audio_still_make_features() -> None:
    for pcm in (b"", b"\x01", silence(8000, 100), silence(8000, 10)):
        f = features_from_pcm(pcm, 8000)
        assert f.shape == (80, 800) and np.isfinite(f).all()


# -- the model file -------------------------------------------------------------


def test_model_file_is_found_without_importing_its_package() -> None:
    path = default_model_path()
    assert path.is_file() and path.name == "smart-turn-v3.2-cpu.onnx"
    SmartTurn().predict_blocking(silence(8000, 500), 8000)
    assert "pipecat" not in sys.modules


def test_missing_model_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TurnModelMissing, match=r"pip install --no-deps pipecat-ai==1\.14\.0"):
        SmartTurn(model_path=tmp_path / "none.onnx").predict_blocking(b"", 8000)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(TurnModelMissing, match="--no-deps"):
        SmartTurn().model_path  # noqa: B018
    assert issubclass(TurnModelMissing, FileNotFoundError)


def test_a_model_with_another_input_is_refused() -> None:
    from voiceos_switch.providers.vad import default_model_path as vad_model

    with pytest.raises(ValueError, match="not a Smart Turn"):
        SmartTurn(model_path=vad_model()).predict_blocking(b"", 8000)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SmartTurn(threads=0)
    with pytest.raises(ValueError):
        features_from_pcm(b"\x00\x00", 0)


# -- the model --------------------------------------------------------------------

#: finished turns the model is sure of at 8 kHz (phone) and 16 kHz, with
#: 150-250 ms of trailing silence (measured 0.90-0.99)
COMPLETE = [
    "What time do you open on Saturday?",
    "I'd like to cancel my order.",
    "Can you tell me when the store opens tomorrow?",
    "Please send me a copy of my bill.",
    "How much does it cost?",
    "I lost my password.",
]
#: unfinished turns it is sure of (measured 0.01-0.15). A fragment read on
#: its own by a TTS voice ends with a final fall, as a finished sentence
#: does, and the model mostly hears it as finished ("My order number is"
#: 0.92-0.97, "Can you check on my" 0.83-0.95 at 8 kHz but 0.05-0.21 at
#: 16 kHz); a trailing "um" or a clause that needs its object does read
#: as unfinished.
INCOMPLETE = [
    "I was wondering if you could",
    "If you could just um",
    "Is there any way that um",
]


def turn_audio(pcm: bytes, rate: int, trailing_ms: int = 200) -> bytes:
    return pcm + silence(rate, trailing_ms)


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_finished_turns_score_high_and_unfinished_ones_low(rate: int) -> None:
    model = SmartTurn()
    await model.load()
    done = {
        t: await model.probability(turn_audio(await voice(t, rate), rate), rate) for t in COMPLETE
    }
    cut = {
        t: await model.probability(turn_audio(await voice(t, rate), rate), rate) for t in INCOMPLETE
    }
    assert all(p >= 0.8 for p in done.values()), done
    assert all(p <= 0.3 for p in cut.values()), cut
    assert min(done.values()) - max(cut.values()) > 0.5


async def test_phone_audio_read_as_16k_calls_everything_finished() -> None:
    """The mistake the resampling prevents: 8 kHz bytes declared as 16 kHz."""
    model = SmartTurn()
    for text in INCOMPLETE:
        pcm = turn_audio(await voice(text, 8000), 8000)
        assert model.predict_blocking(pcm, 8000) <= 0.3
        assert model.predict_blocking(pcm, 16000) >= 0.5


async def test_probability_runs_on_the_turn_worker_not_the_event_loop() -> None:
    seen: list[str] = []

    class Recording(SmartTurn):
        def predict_blocking(self, pcm: bytes, sample_rate: int) -> float:
            seen.append(threading.current_thread().name)
            return super().predict_blocking(pcm, sample_rate)

    model = Recording()
    pcm = turn_audio(await voice(COMPLETE[0], 8000), 8000)
    p = await model.probability(pcm, 8000)
    assert p == pytest.approx(model.predict_blocking(pcm, 8000), abs=1e-6)
    assert seen[0].startswith("turn") and seen[0] != threading.current_thread().name


async def test_short_turns_still_get_an_answer() -> None:
    model = SmartTurn()
    speech = await voice("Yes.", 8000)
    for pcm in (b"", silence(8000, 100), speech[: 8000 * 2 // 10], speech[: 8000 * 2 // 20]):
        p = await model.probability(pcm, 8000)
        assert 0.0 <= p <= 1.0


def test_one_session_per_process_and_thread_count() -> None:
    a, b = SmartTurn(), SmartTurn()
    assert a._session() is b._session()
    assert SmartTurn(threads=2)._session() is not a._session()
    assert turn_module.SmartTurn.executor() is SmartTurn.executor()

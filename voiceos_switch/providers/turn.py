"""End of turn from the audio itself: Smart Turn v3.2 (ONNX, int8, 8.7 MB).

A Whisper-tiny encoder with a classifier head that hears whether the
speaker sounds finished (falling intonation, a complete phrase) or is
pausing mid-thought ("my order number is..."). It reads at most the last 8 s
of the turn as a log-mel spectrogram and answers a probability; 0.5 and up
means "finished".

The input contract, which the model cannot check for itself:

- 16 kHz mono. Phone audio (8 kHz) is resampled first: 8 kHz samples read
  as 16 kHz play back an octave up at double speed, and the model still
  answers, wrongly and without complaint: it calls nearly every turn
  finished (on real phone prompts, 94% of mid-sentence pauses against 69%);
- the last 8 s (128 000 samples), zero-padded at the front when shorter, so
  the end of the speech always sits at the right edge;
- the padded 8 s normalised to zero mean and unit variance, then the
  Whisper log-mel (:mod:`voiceos_switch.audio.mel`): ``[1, 80, 800]``.

One ONNX session per process, shared by all calls; runs go to one niced
worker thread, never the event loop. A check costs about 3 ms of features
and 30-40 ms of model on one core.

On narrowband speech the model leans towards "finished": on real 8 kHz
phone prompts it recognises 92% of whole sentences at 0.5 but also calls
69% of mid-sentence pauses finished (``bench/turn.py``). Use it to shorten
the silence wait, not to replace it.

The model file ships in the ``pipecat-ai`` 1.14.0 wheel, installed without
its dependencies; it is located on disk, never imported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.mel import HOP, N_MELS, log_mel_spectrogram
from ..audio.pcm import resample
from .workers import model_executor

MODEL_RATE = 16000
WINDOW_S = 8
WINDOW_SAMPLES = MODEL_RATE * WINDOW_S  # 128000
FRAMES = WINDOW_SAMPLES // HOP  # 800
INPUT_NAME = "input_features"
#: variance floor of the waveform normalisation (an all-zero input stays zero)
NORM_EPS = 1e-7

MODEL_DISTRIBUTION = "pipecat-ai==1.14.0"
MODEL_PACKAGE = "pipecat"
MODEL_FILE = Path("audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx")
INSTALL_HINT = f"pip install --no-deps {MODEL_DISTRIBUTION}"


class TurnModelMissing(FileNotFoundError):
    """The Smart Turn model file is not on this machine."""


def _missing(where: str) -> TurnModelMissing:
    return TurnModelMissing(
        f"Smart Turn v3.2 model not found ({where}). It ships in the "
        f"{MODEL_DISTRIBUTION} wheel; install that wheel without its "
        f"dependencies (only the model file is used): {INSTALL_HINT}"
    )


def default_model_path() -> Path:
    """Where the installed ``pipecat-ai`` wheel keeps the model (found, not imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    if not locations:
        raise _missing(f"no '{MODEL_PACKAGE}' package is installed")
    for location in locations:
        candidate = Path(location) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return Path(locations[0]) / MODEL_FILE


def turn_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of 16 kHz float audio, zero-padded at the front, normalised."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)[-WINDOW_SAMPLES:]
    window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    if len(x):
        window[-len(x) :] = x
    window -= window.mean()
    window /= np.sqrt(window.var() + NORM_EPS)
    return window


def features(audio: np.ndarray) -> np.ndarray:
    """``[80, 800]`` float32 model input of 16 kHz float audio (any length)."""
    return log_mel_spectrogram(turn_window(audio))


def features_from_pcm(pcm: bytes, sample_rate: int) -> np.ndarray:
    """``[80, 800]`` model input of PCM16 LE mono at ``sample_rate`` (resampled to 16 kHz)."""
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    pcm = pcm[: len(pcm) // 2 * 2]
    # only the last 8 s matter: resample those (and 20 ms more, which takes
    # the resampler's start-up transient out of the window), not the whole turn
    keep = (sample_rate * WINDOW_S + sample_rate // 50) * 2
    pcm16 = resample(pcm[-keep:], sample_rate, MODEL_RATE)
    audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
    return features(audio)


class _Sessions:
    """One ONNX session per (model file, threads) per process."""

    _lock = threading.Lock()
    _sessions: dict[tuple[Path, int], Any] = {}

    @classmethod
    def get(cls, path: Path, threads: int) -> Any:
        key = (path, threads)
        with cls._lock:
            if key not in cls._sessions:
                cls._sessions[key] = cls._open(path, threads)
            return cls._sessions[key]

    @staticmethod
    def _open(path: Path, threads: int) -> Any:
        if not path.is_file():
            raise _missing(f"no file at {path}")
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # idle pool threads sleep instead of spinning: the cores are shared
        # with the event loop and the other models
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=opts
        )
        inputs = session.get_inputs()
        if (
            len(inputs) != 1
            or inputs[0].name != INPUT_NAME
            or list(inputs[0].shape[1:])
            != [
                N_MELS,
                FRAMES,
            ]
        ):
            got = [(i.name, i.shape) for i in inputs]
            raise ValueError(
                f"{path} is not a Smart Turn v3 model: expected one input "
                f"'{INPUT_NAME}' [batch, {N_MELS}, {FRAMES}], got {got}"
            )
        return session


class SmartTurn:
    """``await turn.probability(pcm, rate)`` -> probability the speaker has finished.

    ``pcm`` is the caller's turn so far (PCM16 LE mono at 8000 or 16000 Hz),
    ending where the check is made; a little trailing silence (100-300 ms,
    as a VAD hands over) is what the model was made for. Audio shorter than
    a fraction of a second still gets an answer.
    """

    name = "smart-turn-v3.2"
    _executor: ThreadPoolExecutor | None = None
    _executor_lock = threading.Lock()

    def __init__(
        self,
        model_path: Path | None = None,
        threads: int = 1,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._model_path = model_path
        self.threads = threads

    @property
    def model_path(self) -> Path:
        if self._model_path is None:
            self._model_path = default_model_path()
        return self._model_path

    def _session(self) -> Any:
        return _Sessions.get(self.model_path, self.threads)

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._executor_lock:
            if cls._executor is None:
                cls._executor = model_executor("turn")
            return cls._executor

    def load_blocking(self) -> None:
        """Open the session and run it once (the first run is the slow one)."""
        self.predict_blocking(bytes(MODEL_RATE // 5 * 2), MODEL_RATE)

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor(), self.load_blocking)

    def predict_features(self, input_features: np.ndarray) -> float:
        """Probability for one ``[80, 800]`` feature matrix (see :func:`features`)."""
        x = np.asarray(input_features, dtype=np.float32).reshape(1, N_MELS, FRAMES)
        (out,) = self._session().run(None, {INPUT_NAME: x})
        return float(np.asarray(out).reshape(-1)[0])

    def predict_blocking(self, pcm: bytes, sample_rate: int) -> float:
        """Probability that the turn in ``pcm`` is complete (on the calling thread)."""
        return self.predict_features(features_from_pcm(pcm, sample_rate))

    async def probability(self, pcm: bytes, sample_rate: int) -> float:
        """:meth:`predict_blocking` on the turn model's worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor(), self.predict_blocking, pcm, sample_rate)

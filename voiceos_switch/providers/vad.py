"""Voice activity detection: Silero VAD (ONNX) behind a cheap webrtcvad gate.

The Silero model is the one faster-whisper ships (``assets/silero_vad_v6.onnx``):
16 kHz only, 512-sample windows (32 ms) with 64 samples of context, and a
recurrent state carried from window to window. Phone audio at 8 kHz is
resampled to 16 kHz on the way in. webrtcvad, which understands 8 kHz
natively and costs microseconds, decides whether a window is worth the
model's time: while it hears nothing for a while, Silero is skipped and
the window scores 0.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio.pcm import StreamResampler

WINDOW = 512
CONTEXT = 64
MODEL_RATE = 16000
WINDOW_MS = WINDOW * 1000 // MODEL_RATE  # 32
#: windows replayed into the model's recurrent state when the gate opens
WARMUP_WINDOWS = 4


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def vad_executor() -> ThreadPoolExecutor:
    """The one thread every call's VAD runs on. Not niced like the other
    model threads: a window takes a fraction of a millisecond, and how soon
    it is scored is how soon the agent hears the caller."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        return _executor


def default_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class _Session:
    """One ONNX session per process, shared by all calls (it is stateless;
    each stream keeps its own recurrent state)."""

    _lock = threading.Lock()
    _sessions: dict[Path, object] = {}

    @classmethod
    def get(cls, path: Path) -> object:
        with cls._lock:
            if path not in cls._sessions:
                import onnxruntime

                opts = onnxruntime.SessionOptions()
                opts.inter_op_num_threads = 1
                opts.intra_op_num_threads = 1
                opts.log_severity_level = 4
                cls._sessions[path] = onnxruntime.InferenceSession(
                    str(path), providers=["CPUExecutionProvider"], sess_options=opts
                )
            return cls._sessions[path]


#: Silero's speech threshold by input rate. Measured on natural speech through
#: a telephone channel (300-3400 Hz, mu-law): Silero v6 scores such speech
#: 0.15-0.6 (it leans on the fundamental below 300 Hz, which the phone
#: network removes) and noise or silence below 0.05. Wideband input keeps
#: the usual 0.5.
DEFAULT_THRESHOLDS = {8000: 0.15}


def default_threshold(input_rate: int) -> float:
    return DEFAULT_THRESHOLDS.get(input_rate, 0.5)


@dataclass(frozen=True, slots=True)
class VADResult:
    """Speech probability of one 32 ms window ending ``end_ms`` into the stream."""

    probability: float
    end_ms: int
    speech: bool


class VADStream:
    """Feed caller audio in any chunk size; get a probability per 32 ms window."""

    def __init__(
        self,
        input_rate: int,
        model_path: Path | None = None,
        gate: bool = True,
        gate_mode: int = 2,
        gate_hangover_ms: int = 300,
        threshold: float | None = None,
    ) -> None:
        self.threshold = default_threshold(input_rate) if threshold is None else threshold
        self._session = _Session.get(model_path or default_model_path())
        self._resampler = StreamResampler(input_rate, MODEL_RATE)
        self._buf = np.zeros(0, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._windows = 0
        self._held: list[np.ndarray] = []
        self._cold = False
        self.model_runs = 0
        self._gate = None
        if gate:
            import webrtcvad

            self._gate = webrtcvad.Vad(gate_mode)
        self._gate_rate = input_rate if input_rate in (8000, 16000, 32000, 48000) else None
        self._gate_pending = b""
        self._gate_open_until_ms = 0
        self._input_ms = 0.0
        self._input_rate = input_rate
        self._hangover = gate_hangover_ms

    def feed(self, pcm: bytes) -> list[VADResult]:
        """Score ``pcm`` here and now (blocking: the model runs in this thread)."""
        return self._score(self._split(pcm))

    async def feed_async(self, pcm: bytes) -> list[VADResult]:
        """Score ``pcm`` with the model on the VAD thread, never on the event
        loop; while the gate hears no voice nothing leaves the loop."""
        windows = self._split(pcm)
        if not any(run for run, _, _ in windows):
            return self._score(windows)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(vad_executor(), self._score, windows)

    def _split(self, pcm: bytes) -> list[tuple[bool, np.ndarray, int]]:
        """Cut the input into model windows: (run the model?, window, end ms)."""
        self._update_gate(pcm)
        self._input_ms += len(pcm) / 2 / self._input_rate * 1000
        audio = np.frombuffer(self._resampler.process(pcm), dtype="<i2").astype(np.float32)
        self._buf = np.concatenate([self._buf, audio / 32768.0])
        out: list[tuple[bool, np.ndarray, int]] = []
        while len(self._buf) >= WINDOW:
            window, self._buf = self._buf[:WINDOW], self._buf[WINDOW:]
            self._windows += 1
            end_ms = self._windows * WINDOW_MS
            gated = self._gate is not None and end_ms > self._gate_open_until_ms + WINDOW_MS
            out.append((not gated, window, end_ms))
        return out

    def _score(self, windows: list[tuple[bool, np.ndarray, int]]) -> list[VADResult]:
        out: list[VADResult] = []
        for run, window, end_ms in windows:
            if not run:
                # the gate heard no voice recently: spend nothing on the model,
                # but keep the last windows to warm it up when voice comes
                self._held.append(window)
                del self._held[:-WARMUP_WINDOWS]
                self._cold = True
                out.append(VADResult(0.0, end_ms, False))
                continue
            if self._cold:
                self._h[:] = 0
                self._c[:] = 0
                self._context = np.zeros(CONTEXT, dtype=np.float32)
                for held in self._held:
                    self._run(held)
                self._held.clear()
                self._cold = False
            prob = self._run(window)
            out.append(VADResult(prob, end_ms, prob >= self.threshold))
        return out

    def _run(self, window: np.ndarray) -> float:
        x = np.concatenate([self._context, window])[None, :]
        self._context = window[-CONTEXT:]
        prob, self._h, self._c = self._session.run(  # type: ignore[attr-defined]
            None, {"input": x, "h": self._h, "c": self._c}
        )
        self.model_runs += 1
        return float(np.asarray(prob).reshape(-1)[0])

    def _update_gate(self, pcm: bytes) -> None:
        if self._gate is None:
            return
        if self._gate_rate is None:
            self._gate_open_until_ms = 10**12  # cannot gate this rate: always run
            return
        frame = self._gate_rate * 2 // 50  # 20 ms
        data = self._gate_pending + pcm
        pos = 0
        t = self._input_ms - len(self._gate_pending) / 2 / self._gate_rate * 1000
        while len(data) - pos >= frame:
            t += 20
            if self._gate.is_speech(data[pos : pos + frame], self._gate_rate):
                self._gate_open_until_ms = int(t) + self._hangover
            pos += frame
        self._gate_pending = data[pos:]

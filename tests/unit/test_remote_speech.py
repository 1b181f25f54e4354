"""The speech-service adapters against local servers that speak each protocol.

The servers are written here from the protocol descriptions (OpenAI's
``/audio/transcriptions`` multipart upload and ``/audio/speech`` streamed
PCM; vosk-server's WebSocket messages) and recognise and synthesise with the
embedded models, so what the adapters return can be checked for content.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator
from email.parser import BytesParser
from email.policy import HTTP

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.phone import phone_channel
from tests.textcheck import wer
from voiceos_switch.providers import registry
from voiceos_switch.providers.fallback import FallbackSTT, FallbackTTS
from voiceos_switch.providers.remote import OpenAICompatSTT, OpenAICompatTTS, VoskServerSTT
from voiceos_switch.providers.stt import WhisperSTT
from voiceos_switch.providers.tts.espeak import EspeakTTS
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.settings import Settings

QUESTION = "What time does the store open on Saturday"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SpeechServer:
    """An OpenAI-compatible speech server: transcription with word timings,
    and speech streamed as 24 kHz PCM a chunk at a time."""

    def __init__(self) -> None:
        self.stt = WhisperSTT()
        self.requests: list[dict[str, object]] = []
        self.fail_next = 0
        self.chunk_delay = 0.15

    async def transcriptions(self, request: Request) -> Response:
        body = await request.body()
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + body)
        fields: dict[str, list[bytes]] = {}
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            fields.setdefault(str(name), []).append(payload if isinstance(payload, bytes) else b"")
        self.requests.append(
            {k: v[0] if k == "file" else [x.decode() for x in v] for k, v in fields.items()}
        )
        if self.fail_next:
            self.fail_next -= 1
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        with wave.open(io.BytesIO(fields["file"][0])) as w:
            rate, pcm = w.getframerate(), w.readframes(w.getnframes())
        t = await self.stt.transcribe(pcm, rate)
        return JSONResponse(
            {
                "task": "transcribe",
                "language": "english",
                "duration": t.audio_s,
                "text": t.text,
                "words": [{"word": w.text, "start": w.start, "end": w.end} for w in t.words],
            }
        )

    async def speech(self, request: Request) -> Response:
        req = json.loads(await request.body())
        self.requests.append(req)
        if req.get("response_format") != "pcm":
            return JSONResponse({"error": {"message": "only pcm here"}}, status_code=400)
        speed = float(req.get("speed", 1.0))
        audio = await PiperTTS(steady=True, length_scale=1 / speed).synthesize(
            str(req["input"]), 24000
        )

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(audio), 9601):  # odd sizes: samples split across chunks
                yield audio[i : i + 9601]
                await asyncio.sleep(self.chunk_delay)

        return StreamingResponse(chunks(), media_type="audio/pcm")


@pytest.fixture(scope="module")
def speech_server() -> Iterator[tuple[str, SpeechServer]]:
    server = SpeechServer()
    app = Starlette(
        routes=[
            Route("/v1/audio/transcriptions", server.transcriptions, methods=["POST"]),
            Route("/v1/audio/speech", server.speech, methods=["POST"]),
        ]
    )
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "the test speech server did not start"
    yield f"http://127.0.0.1:{port}/v1", server
    uv.should_exit = True
    thread.join(5)


async def question_audio(rate: int = 8000) -> bytes:
    return phone_channel(await PiperTTS(steady=True).synthesize(QUESTION + "?", rate), rate)


async def test_openai_transcription_returns_the_words_with_timings(
    speech_server: tuple[str, SpeechServer],
) -> None:
    url, server = speech_server
    pcm = await question_audio()
    t = await OpenAICompatSTT("whisper-1", base_url=url).transcribe(pcm, 8000)
    errors, n = wer(QUESTION, t.text)
    assert errors <= 1, t.text
    assert len(t.words) >= n - 1
    assert all(0 <= w.start <= w.end <= t.audio_s + 0.5 for w in t.words)
    sent = server.requests[-1]
    assert sent["model"] == ["whisper-1"] and sent["response_format"] == ["verbose_json"]
    assert isinstance(sent["file"], bytes) and sent["file"][:4] == b"RIFF"


async def test_a_failing_transcription_service_falls_back_in_the_same_turn(
    speech_server: tuple[str, SpeechServer],
) -> None:
    url, server = speech_server
    server.fail_next = 1
    chain = FallbackSTT([OpenAICompatSTT("whisper-1", base_url=url), WhisperSTT()])
    t = await chain.transcribe(await question_audio(), 8000)
    assert chain.fallbacks == 1
    assert wer(QUESTION, t.text)[0] <= 1, t.text


async def test_openai_speech_streams_and_comes_out_at_the_call_rate(
    speech_server: tuple[str, SpeechServer],
) -> None:
    url, server = speech_server
    tts = OpenAICompatTTS("alloy", base_url=url)
    started = time.monotonic()
    arrivals: list[float] = []
    chunks: list[bytes] = []
    async for chunk in tts.stream("We open at nine on Saturday.", 8000):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    audio = b"".join(chunks)
    assert (
        server.requests[-1]["voice"] == "alloy" and server.requests[-1]["response_format"] == "pcm"
    )
    # streamed: the first audio came while the server was still sending
    assert len(chunks) > 2 and arrivals[0] < arrivals[-1] - 2 * server.chunk_delay
    assert all(len(c) % 2 == 0 for c in chunks)  # whole samples, even from odd chunks
    seconds = len(audio) / 2 / 8000
    assert 1.0 < seconds < 4.0
    heard = await WhisperSTT().transcribe(audio, 8000)
    assert wer("We open at nine on Saturday", heard.text)[0] <= 2, heard.text


async def test_a_calmer_openai_voice_asks_for_a_slower_speed(
    speech_server: tuple[str, SpeechServer],
) -> None:
    url, server = speech_server
    tts = OpenAICompatTTS("alloy", base_url=url)
    normal = await tts.synthesize("We open at nine on Saturday.", 8000)
    calmer = tts.calmer()
    slow = await calmer.synthesize("We open at nine on Saturday.", 8000)
    assert server.requests[-2]["speed"] == 1.0 and server.requests[-1]["speed"] == 0.9
    assert len(slow) > 1.05 * len(normal)
    assert calmer.name != tts.name  # the speech cache keeps the two apart


async def test_a_dead_speech_service_falls_back_to_the_embedded_voice() -> None:
    dead = OpenAICompatTTS("alloy", base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout_s=2)
    chain = FallbackTTS([dead, EspeakTTS()])
    audio = b"".join([c async for c in chain.stream("Hello there.", 8000)])
    assert chain.fallbacks == 1 and len(audio) > 8000


@pytest.fixture
async def vosk_server() -> AsyncIterator[tuple[str, list[dict[str, object]]]]:
    """vosk-server's WebSocket protocol, recognising with Whisper."""
    stt = WhisperSTT()
    configs: list[dict[str, object]] = []

    async def handle(ws: websockets.ServerConnection) -> None:
        rate = 16000
        audio = bytearray()
        async for message in ws:
            if isinstance(message, bytes):
                audio += message
                await ws.send(json.dumps({"partial": ""}))
                continue
            msg = json.loads(message)
            if "config" in msg:
                configs.append(msg["config"])
                rate = int(msg["config"]["sample_rate"])
            elif msg.get("eof"):
                t = await stt.transcribe(bytes(audio), rate)
                result = [
                    {"word": w.text, "start": w.start, "end": w.end, "conf": w.probability}
                    for w in t.words
                ]
                await ws.send(json.dumps({"result": result, "text": t.text.lower()}))
                return

    async with websockets.serve(handle, "127.0.0.1", 0) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}", configs


async def test_vosk_server_protocol_gives_text_and_word_timings(
    vosk_server: tuple[str, list[dict[str, object]]],
) -> None:
    url, configs = vosk_server
    t = await VoskServerSTT(url).transcribe(await question_audio(), 8000)
    assert configs == [{"sample_rate": 8000, "words": 1}]
    assert wer(QUESTION, t.text)[0] <= 1, t.text
    assert t.words and 0 < t.confidence <= 1


async def test_a_vosk_server_that_is_not_there_is_a_clear_error() -> None:
    with pytest.raises(OSError):
        await VoskServerSTT(f"ws://127.0.0.1:{_free_port()}").transcribe(bytes(16000), 8000)


def test_providers_are_chosen_by_name() -> None:
    s = Settings(stt="openai:whisper-1,vosk-server:ws://127.0.0.1:2700,whisper")
    chain = registry.make_stt(s)
    assert [p.name for p in chain.providers] == [
        "openai-stt:whisper-1",
        "vosk-server:ws://127.0.0.1:2700",
        "whisper",
    ]
    tts = registry.make_tts("openai:alloy,espeak", s)
    assert [p.name for p in tts.providers] == ["openai-tts:tts-1/alloy", "espeak"]
    with pytest.raises(ValueError, match="stt='vosk:x'"):
        registry.check_stt_name("vosk:x")
    with pytest.raises(ValueError, match="voice='openai:'"):
        registry.check_voice_name("openai:")


def _sse(obj: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def test_streamed_tool_call_deltas_are_assembled() -> None:
    """A server that streams a tool call the way OpenAI's API does: the id
    and name first, the JSON arguments in fragments, two calls interleaved;
    and the way llama.cpp's server does, naming the function in every chunk."""
    from voiceos_switch.providers.llm import OpenAICompatLLM, ToolCallRequest
    from voiceos_switch.tools import Tool

    seen: list[dict[str, object]] = []

    async def completions(request: Request) -> Response:
        seen.append(json.loads(await request.body()))

        def delta(d: dict[str, object], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": d, "finish_reason": finish}
            return _sse(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [choice],
                }
            )

        def call(i: int, **fn: str) -> dict[str, object]:
            entry: dict[str, object] = {"index": i, "function": fn}
            if "name" in fn:
                entry.update(id=f"call_{i}", type="function")
            return {"tool_calls": [entry]}

        async def body() -> AsyncIterator[bytes]:
            yield delta({"role": "assistant", "content": None})
            yield delta(call(0, name="lookup_order", arguments=""))
            yield delta(call(0, arguments='{"order_'))
            yield delta(call(1, name="store_hours", arguments='{"day": "sat'))
            yield delta(call(0, arguments='number": "427"}'))
            # llama.cpp's server names the function again in every chunk
            yield delta(call(1, name="store_hours", arguments='urday"}'))
            yield delta({}, "tool_calls")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(uv.serve())
    try:
        for _ in range(100):
            if uv.started:
                break
            await asyncio.sleep(0.05)

        def lookup_order(order_number: str) -> str:
            """Look up an order."""
            return "shipped"

        def store_hours(day: str) -> str:
            """Opening hours on a day."""
            return "nine to five"

        llm = OpenAICompatLLM("m", base_url=f"http://127.0.0.1:{port}/v1")
        tools = [Tool.from_function(lookup_order), Tool.from_function(store_hours)]
        events = [e async for e in llm.stream([{"role": "user", "content": "hi"}], tools)]
        calls = [e for e in events if isinstance(e, ToolCallRequest)]
        assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
            ("call_0", "lookup_order", {"order_number": "427"}),
            ("call_1", "store_hours", {"day": "saturday"}),
        ]
        sent_tools = seen[0]["tools"]
        assert isinstance(sent_tools, list)
        params = sent_tools[0]["function"]["parameters"]
        assert params["properties"]["order_number"]["type"] == "string"
    finally:
        uv.should_exit = True
        await serving

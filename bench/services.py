"""Our own orchestration, without model speed: services that answer after 100 ms.

An OpenAI-compatible transcription server and chat server on loopback, in
their own process, each answering a fixed 100 ms after the request arrives
(the chat server then streams the rest of its answer a word every 5 ms).
The transcription server knows the scripted caller's clips and returns
each clip's words; the chat server answers every question with a sentence
of its own. The agent runs on them (`model="openai:..."`,
`stt="openai:..."`), with the piper voice and no facts (so every answer
comes from the "model"), behind a real AudioSocket connection; the caller
is the same scripted caller as bench/latency.py, measuring on the wire from
the end of its speech to the agent's first audible frame.

What is left of the response time is ours: noticing the pause, two HTTP
round trips, the first clause's synthesis, the pacer.

    .venv/bin/python bench/services.py --turns 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import sys
import time
import wave
from pathlib import Path
from statistics import median
from typing import Any

from stats import pct  # bench/stats.py (scripts run from bench/)

DELAY_S = 0.1
ANSWER = "Sure, we can help with that today. Is there anything else you need?"
QUESTIONS = [
    "What time do you open on Saturday?",
    "Do you sell paint?",
    "Can I bring back a hammer?",
    "Are you open on Sunday?",
    "Do you have garden supplies?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------- the servers
async def streamed_answer(request: Any, answer: str, delay_s: float = DELAY_S) -> Any:
    """An OpenAI-compatible streamed chat completion of ``answer``: the first
    word ``delay_s`` after the request arrived, then a word every 5 ms."""
    from starlette.responses import StreamingResponse

    start = time.monotonic()
    req = json.loads(await request.body())

    async def body() -> Any:
        await asyncio.sleep(max(0.0, start + delay_s - time.monotonic()))
        for i, word in enumerate(answer.split(" ")):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": req.get("model", "fake"),
                "choices": [{"index": 0, "delta": {"content": ("" if i == 0 else " ") + word}}],
            }
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            await asyncio.sleep(0.005)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def serve(port: int, clips: Path) -> None:
    import numpy as np
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    known: list[tuple[bytes, str]] = []
    for wav in sorted(clips.glob("*.wav")):
        with wave.open(str(wav)) as w:
            pcm = w.readframes(w.getnframes())
        x = np.frombuffer(pcm, dtype="<i2")
        loud = np.flatnonzero(np.abs(x) > 300)
        a, b = int(loud[0]), int(loud[-1])
        q = (b - a) // 4
        known.append((pcm[(a + q) * 2 : (b - q) * 2], wav.with_suffix(".txt").read_text()))

    async def transcriptions(request: Request) -> Response:
        start = time.monotonic()
        body = await request.body()
        riff = body.find(b"RIFF")
        with wave.open(io.BytesIO(body[riff:])) as w:
            pcm = w.readframes(w.getnframes())
        text = next((t for clip, t in reversed(known) if clip in pcm), "")
        await asyncio.sleep(max(0.0, start + DELAY_S - time.monotonic()))
        return JSONResponse({"text": text, "words": [], "duration": len(pcm) / 16000})

    async def completions(request: Request) -> Response:
        return await streamed_answer(request, ANSWER)

    app = Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------- the run
async def run(turns: int, voice: str) -> dict[str, Any]:
    import tempfile

    from voiceos_switch.agent import Agent
    from voiceos_switch.demo import Step, _caller_speech, run_caller
    from voiceos_switch.settings import Settings

    script = [Step(QUESTIONS[i % len(QUESTIONS)]) for i in range(turns)]
    with tempfile.TemporaryDirectory() as tmp:
        clips = Path(tmp)
        for i, q in enumerate(QUESTIONS):
            pcm = await _caller_speech(q)
            with wave.open(str(clips / f"{i}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(pcm)
            (clips / f"{i}.txt").write_text(q)
        port = _free_port()
        server = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "serve", "--port", str(port), "--clips", str(clips)
        )
        try:
            url = f"http://127.0.0.1:{port}/v1"
            for _ in range(100):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            settings = Settings(
                audiosocket="127.0.0.1:0", llm_base_url=url, stt_base_url=url, stt="openai:fake"
            )
            agent = Agent(
                model="openai:fake",
                voice=voice,
                system_prompt="You are a phone agent for a hardware store.",
                greeting="Hello, Acme Hardware. How can I help?",
                settings=settings,
            )
            ready, stop = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
            await asyncio.wait_for(ready.wait(), 180)
            result = await run_caller(agent.server.address[1], script)  # type: ignore[index]
            for _ in range(100):
                if not agent.calls:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await task
        finally:
            server.terminate()
            await server.wait()
    (conv,) = agent.finished
    responses = [t.response_ms for t in result.turns if t.response_ms is not None]
    stages: dict[str, list[float]] = {}
    for m in conv.metrics:
        for k, v in m.as_ms().items():
            if v is not None:
                stages.setdefault(k, []).append(v)
    return {
        "turns": len(result.turns),
        "answered": len(responses),
        "response_ms": {"p50": pct(responses, 0.5), "p95": pct(responses, 0.95)},
        "stages_p50_ms": {k: round(median(v), 1) for k, v in stages.items()},
        "voice": voice,
        "service_delay_ms": DELAY_S * 1000,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        ap = argparse.ArgumentParser()
        ap.add_argument("serve")
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--clips", type=Path, required=True)
        a = ap.parse_args()
        serve(a.port, a.clips)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--turns", type=int, default=20)
    ap.add_argument("--voice", default="piper")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from voiceos_switch import log
    from voiceos_switch.settings import Settings

    log.setup(Settings().log_level)  # VOICEOS_LOG_LEVEL=DEBUG shows every turn's cues
    report = asyncio.run(run(args.turns, args.voice))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

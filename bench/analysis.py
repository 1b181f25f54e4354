"""Analysis throughput per worker: one-minute calls analysed per minute.

Builds N one-minute calls in a fresh store (a caller leg and an agent leg of
real synthesised speech with pauses, eight turns, a tool call), starts a real
redis-server and one Celery worker process (concurrency 1, all queues), hands
every call to the queue at once, and times until every analysis of every call
is stored. Reports calls per minute and the time per analysis kind (from the
worker's own task timings).

    .venv/bin/python bench/analysis.py --calls 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import wave
from pathlib import Path
from statistics import median

CALLER = [
    "Hi, I am calling about my order.",
    "The order number is four two seven.",
    "It was supposed to arrive on Tuesday.",
    "Can you tell me when it will come?",
]
AGENT = [
    "Hello, Acme Hardware. How can I help?",
    "Sure, what is the order number?",
    "Order four two seven has shipped. It arrives on Friday.",
    "You are welcome. Have a nice day.",
]


async def _legs(rate: int = 8000) -> tuple[bytes, bytes]:
    from voiceos_switch.providers.tts.piper import PiperTTS

    tts = PiperTTS()
    caller, agent = bytearray(), bytearray()
    slot = rate * 2 * 15 // 2  # 7.5 s per exchange half: 8 halves = 60 s
    for c, a in zip(CALLER, AGENT, strict=True):
        speech_a = await tts.synthesize(a, rate)
        speech_c = await tts.synthesize(c, rate)
        agent += speech_a[:slot].ljust(slot, b"\0")
        caller += bytes(slot)
        caller += speech_c[:slot].ljust(slot, b"\0")
        agent += bytes(slot)
    return bytes(caller), bytes(agent)


def _write(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from tests.redis_server import RedisServer, Worker
    from voiceos_switch.jobs.kinds import KINDS
    from voiceos_switch.records.record import costs
    from voiceos_switch.records.store import Store
    from voiceos_switch.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="voiceos-analysis-"))
    redis = RedisServer()
    redis_url = redis.url
    db_url = f"sqlite:///{tmp / 'calls.db'}"
    settings = Settings(redis_url=redis_url, database_url=db_url)
    store = Store(db_url)
    store.migrate()
    caller, agent = asyncio.run(_legs())
    start = time.time()
    ids = []
    for n in range(args.calls):
        call_id = f"bench-{n:04d}"
        legs = {"caller": tmp / f"{call_id}-caller.wav", "agent": tmp / f"{call_id}-agent.wav"}
        _write(legs["caller"], caller)
        _write(legs["agent"], agent)
        turns = []
        for i, (c, a) in enumerate(zip(CALLER, AGENT, strict=True)):
            t = start + i * 15
            turns.append(
                {
                    "role": "agent",
                    "text": a,
                    "started_at": t,
                    "ended_at": t + 4,
                    "interrupted": False,
                }
            )
            turns.append(
                {
                    "role": "caller",
                    "text": c,
                    "started_at": t + 7.5,
                    "ended_at": t + 11,
                    "interrupted": False,
                }
            )
        usage = {"stt_seconds": 20.0, "llm_tokens_in": 900, "llm_tokens_out": 80, "tts_chars": 150}
        store.save_call(
            {
                "schema": 1,
                "id": call_id,
                "pbx": "asterisk",
                "agent": "bench",
                "caller": "5551234",
                "called": "100",
                "started_at": start,
                "ended_at": start + 60,
                "duration_s": 60.0,
                "sample_rate": 8000,
                "end_reason": "remote hung up",
                "turns": turns,
                "latency": [],
                "emotions": [],
                "tool_calls": [{"name": "lookup_order", "arguments": '{"order_number": "427"}'}],
                "transfers": [],
                "dtmf": "",
                "review_flags": [],
                "recordings": {k: str(v) for k, v in legs.items()},
                "pbx_recordings": [],
                "usage": usage,
                "cost": costs(usage, 60.0, settings),
            }
        )
        ids.append(call_id)

    redis.start()
    env = dict(os.environ, VOICEOS_REDIS_URL=redis_url, VOICEOS_DATABASE_URL=db_url)
    worker = Worker.start(env, tmp / "worker.log")
    try:
        from voiceos_switch.jobs.app import make_app

        app = make_app(settings)
        t0 = time.monotonic()
        for call_id in ids:
            app.send_task("voiceos.analyze_call", args=[call_id], queue="calls")
        done = 0
        while done < len(ids):
            done = sum(1 for c in ids if (store.get_call(c) or {}).get("completed_at"))
            print(f"\ranalysed {done}/{len(ids)} calls", end="", flush=True)
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        print()
    finally:
        worker.stop()
        redis.stop()
    text = worker.text()
    per_kind: dict[str, list[float]] = {}
    ids_kind = {}
    for m in re.finditer(r"run_analysis\[([0-9a-f-]+)\] received", text):
        ids_kind[m.group(1)] = None
    for m in re.finditer(r"run_analysis\[([0-9a-f-]+)\] succeeded in ([0-9.]+)s", text):
        ids_kind[m.group(1)] = float(m.group(2))  # type: ignore[assignment]
    # the kind of each task from the store's results order is not in the log:
    # time each kind directly on one call instead
    from voiceos_switch.jobs import analyses

    record = store.get_call(ids[0]) or {}
    corpus = list(store.all_records())
    for kind in KINDS:
        ctx = {"corpus": corpus} if kind == "topics" else {}
        t = time.perf_counter()
        analyses.ANALYSES[kind](record, settings, ctx)
        per_kind[kind] = [time.perf_counter() - t]
    result = {
        "calls": len(ids),
        "call_minutes": len(ids) * 1.0,
        "elapsed_s": round(elapsed, 1),
        "calls_per_minute": round(len(ids) / (elapsed / 60), 2),
        "seconds_per_kind_one_call": {k: round(median(v), 2) for k, v in per_kind.items()},
        "worker_task_seconds_median": round(median([v for v in ids_kind.values() if v]), 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

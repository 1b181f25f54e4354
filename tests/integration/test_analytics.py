"""After the call, for real: calls through the real Asterisk, records in
SQLite, a real redis-server and a real Celery worker process running every
analysis; and the faults: a worker killed mid-task, Redis down around
hangups, a corrupt recording."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.redis_server import RedisServer, Worker
from voiceos_switch.demo import demo_agent
from voiceos_switch.eventstream import read_events
from voiceos_switch.jobs.kinds import KINDS
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import place_call, write_wav
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.records.store import Store
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration

PRICES = {
    "price_telephony_per_min": 0.012,
    "price_stt_per_min": 0.006,
    "price_llm_per_1k_tokens_in": 0.15,
    "price_llm_per_1k_tokens_out": 0.6,
    "price_tts_per_1k_chars": 0.015,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, Settings, Worker]]:
    tmp = tmp_path_factory.mktemp("analytics")
    redis = RedisServer().start()
    settings = Settings(
        redis_url=redis.url,
        database_url=f"sqlite:///{tmp / 'calls.db'}",
        recordings_dir=tmp / "recordings",
        job_visibility_timeout_s=30,
        **PRICES,  # type: ignore[arg-type]
    )
    worker_env = dict(
        os.environ,
        VOICEOS_REDIS_URL=redis.url,
        VOICEOS_DATABASE_URL=settings.database_url or "",
        VOICEOS_JOB_VISIBILITY_TIMEOUT_S="30",
        **{f"VOICEOS_{k.upper()}": str(v) for k, v in PRICES.items()},
    )
    worker = Worker.start(worker_env, tmp / "worker.log")
    yield redis, settings, worker
    worker.stop()
    redis.stop()


async def wait_complete(store: Store, call_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = [store.get_call(c) for c in call_ids]
        if all(r is not None and r["completed_at"] for r in records):
            return
        await asyncio.sleep(0.25)
    state = {c: sorted(store.get_analyses(c)) for c in call_ids}
    raise AssertionError(f"analyses not complete after {timeout} s: {state}")


async def question_wav(tmp: Path, text: str) -> Path:
    path = tmp / f"{abs(hash(text))}.wav"
    write_wav(path, await PiperTTS(steady=True).synthesize(text, 8000), 8000)
    return path


async def test_calls_through_asterisk_are_recorded_and_analysed(
    asterisk: AsteriskSandbox, env: tuple[RedisServer, Settings, Worker], tmp_path: Path
) -> None:
    redis, settings, worker = env
    agent = demo_agent(settings, voice="piper")
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop))
    store = Store(settings.resolved_database_url)
    try:
        await asyncio.wait_for(ready.wait(), 180)
        questions = [
            "Can you check on my order number four two seven?",
            "What time do you open on Saturday?",
        ]
        for q in questions:
            result = await place_call(
                "100", play=await question_wav(tmp_path, q), delay=4.0, hold=7.0
            )
            assert result.answered
        first_two = [r["id"] for r in store.list_calls()]
        await wait_complete(store, first_two, 180)
        # Redis down for 10 s around the next hangup: the record and its job
        # wait in the store and go out when Redis is back
        redis.stop()
        try:
            result = await place_call(
                "100",
                play=await question_wav(tmp_path, "Do you sell paint?"),
                delay=4.0,
                hold=3.0,
            )
            assert result.answered
            for _ in range(120):  # the bridge writes the record when its side ends
                if len(store.list_calls()) == 3:
                    break
                await asyncio.sleep(0.25)
            ids = [r["id"] for r in store.list_calls()]
            assert len(ids) == 3
            assert len(store.pending_jobs()) == 1  # the third call's job, kept
            await asyncio.sleep(8)
        finally:
            redis.start()
        await wait_complete(store, ids, 180)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    for call_id in ids:
        record = store.get_call(call_id)
        assert record is not None
        got = store.get_analyses(call_id)
        assert set(got) == set(KINDS), got
        assert all(a["status"] == "ok" for a in got.values()), got
        # the bill is usage times prices, recomputed here from the record
        u, minutes = record["usage"], record["duration_s"] / 60
        expected = (
            minutes * PRICES["price_telephony_per_min"]
            + u["stt_seconds"] / 60 * PRICES["price_stt_per_min"]
            + u["llm_tokens_in"] / 1000 * PRICES["price_llm_per_1k_tokens_in"]
            + u["llm_tokens_out"] / 1000 * PRICES["price_llm_per_1k_tokens_out"]
            + u["tts_chars"] / 1000 * PRICES["price_tts_per_1k_chars"]
        )
        # (answers from the agent's facts use no model: its tokens may be 0)
        assert u["stt_seconds"] > 0 and u["tts_chars"] > 0
        assert record["cost"]["total"] == pytest.approx(expected, abs=1e-5)
        assert got["cost"]["result"]["matches_record"]
        # caller and agent re-transcribed from their own recordings
        tr = got["transcript"]["result"]
        assert tr["caller"]["words"] and tr["agent"]["words"]
        assert _all_exist(record["recordings"].values())
        assert got["summary"]["result"]["summary"]
        assert got["summary"]["result"]["disposition"] == "handled"
    # the workers put each analysis on the bridges' event stream (what was
    # there before Redis restarted is gone: it keeps nothing on disk here)
    streamed = await read_events(redis.url)
    done = {
        e["analysis"] for _, e in streamed if e["kind"] == "analysis" and e["call_id"] == ids[0]
    }
    assert done == set(KINDS), streamed
    assert any(e["kind"] == "analyses_complete" and e["call_id"] == ids[0] for _, e in streamed)
    # the order call went to the model, which asked for the tool
    assert store.get_call(ids[-1])["usage"]["llm_tokens_in"] > 0  # type: ignore[index]
    first = store.get_analyses(ids[-1])  # list_calls is newest first: the order call
    assert (
        "four" in first["transcript"]["result"]["caller"]["text"].lower()
        or "427" in (first["transcript"]["result"]["caller"]["text"])
    )
    assert "lookup_order" in first["summary"]["result"]["action_items"][0]


def producer(settings: Settings) -> Any:
    """A Celery app that only sends (no result store to keep a connection to)."""
    from voiceos_switch.jobs.app import make_app

    app = make_app(settings)
    app.conf.result_backend = None
    return app


def _all_exist(paths: object) -> bool:
    return all(Path(p).exists() for p in paths)  # type: ignore[attr-defined]


def _long_recording(directory: Path, call_id: str, seconds: float) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = __import__("numpy").random.default_rng(1)
    pcm = (rng.standard_normal(int(seconds * 8000)) * 2000).astype("<i2").tobytes()
    paths = {}
    for leg in ("caller", "agent"):
        path = directory / f"{call_id}-{leg}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(pcm)
        paths[leg] = str(path)
    return paths


def _record(call_id: str, recordings: dict[str, str]) -> dict[str, object]:
    from tests.unit.test_records import record

    return record(call_id, ["Where is my order?"], recordings=recordings)


async def test_a_worker_killed_mid_task_runs_it_again_and_stores_once(
    env: tuple[RedisServer, Settings, Worker], tmp_path: Path
) -> None:
    _, settings, worker = env
    store = Store(settings.resolved_database_url)
    store.migrate()
    call_id = "killed-mid-task"
    store.save_call(_record(call_id, _long_recording(tmp_path, call_id, 240.0)))  # type: ignore[arg-type]
    sent = producer(settings).send_task(
        "voiceos.run_analysis", args=[call_id, "transcript"], queue="transcribe"
    )
    worker.wait_for(f"run_analysis[{sent.id}] received", 30)
    await asyncio.sleep(1.0)  # Whisper is chewing on four minutes of audio
    assert store.analysis_count(call_id, "transcript") == 0
    children = psutil.Process(worker.proc.pid).children()
    assert children, "the worker has no pool process"
    for child in children:
        child.send_signal(signal.SIGKILL)
    for _ in range(480):
        if store.analysis_count(call_id, "transcript"):
            break
        await asyncio.sleep(0.25)
    assert store.analysis_count(call_id, "transcript") == 1
    # the worker logs the success after the result is stored: wait for the line
    worker.wait_for(f"run_analysis[{sent.id}] succeeded", 60)
    log = worker.text()
    assert "WorkerLostError" in log or "Worker exited prematurely" in log
    assert log.count(f"run_analysis[{sent.id}] succeeded") == 1


async def test_a_corrupt_recording_is_a_clear_error_without_a_retry_storm(
    env: tuple[RedisServer, Settings, Worker], tmp_path: Path
) -> None:
    _, settings, worker = env
    store = Store(settings.resolved_database_url)
    store.migrate()
    call_id = "corrupt-recording"
    bad = tmp_path / "bad-caller.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    store.save_call(_record(call_id, {"caller": str(bad)}), ("analyze",))  # type: ignore[arg-type]
    producer(settings).send_task("voiceos.analyze_call", args=[call_id], queue="calls")
    await wait_complete(store, [call_id], 60)
    got = store.get_analyses(call_id)
    assert got["transcript"]["status"] == "failed"
    assert "unreadable" in got["transcript"]["result"]["error"]
    assert worker.text().count("Retry in") == 0
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "voiceos_switch.cli", "calls", "show", call_id],
        env=dict(os.environ, VOICEOS_DATABASE_URL=settings.database_url or ""),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 1
    assert "transcript: FAILED: recording" in shown.stdout and "unreadable" in shown.stdout

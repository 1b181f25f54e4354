"""Call records, the store, the outbox and the analyses, without a worker."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.redis_server import RedisServer
from voiceos_switch.jobs import analyses
from voiceos_switch.jobs.outbox import Outbox
from voiceos_switch.records.record import costs
from voiceos_switch.records.store import Store
from voiceos_switch.settings import Settings


def record(call_id: str, caller_says: list[str], **extra: Any) -> dict[str, Any]:
    start = 1_700_000_000.0
    turns: list[dict[str, Any]] = []
    t = start
    for text in caller_says:
        turns.append(
            {
                "role": "agent",
                "text": "How can I help?",
                "started_at": t,
                "ended_at": t + 1,
                "interrupted": False,
            }
        )
        turns.append(
            {
                "role": "caller",
                "text": text,
                "started_at": t + 1.5,
                "ended_at": t + 3,
                "interrupted": False,
            }
        )
        t += 4
    usage = {"stt_seconds": 30.0, "llm_tokens_in": 2000, "llm_tokens_out": 500, "tts_chars": 1500}
    base = {
        "schema": 1,
        "id": call_id,
        "pbx": "asterisk",
        "agent": "shop",
        "caller": "5551234",
        "called": "100",
        "started_at": start,
        "ended_at": start + 90,
        "duration_s": 90.0,
        "sample_rate": 8000,
        "end_reason": "remote hung up",
        "turns": turns,
        "latency": [],
        "emotions": [],
        "tool_calls": [],
        "transfers": [],
        "dtmf": "",
        "review_flags": [],
        "recordings": {},
        "pbx_recordings": [],
        "usage": usage,
        "cost": costs(usage, 90.0, Settings()),
    }
    base.update(extra)
    return base


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'calls.db'}")
    s.migrate()
    return s


def test_a_record_is_stored_once_with_its_job_in_wal_mode(store: Store, tmp_path: Path) -> None:
    store.migrate()  # idempotent
    rec = record("c1", ["Where is my order?"])
    assert store.save_call(rec, ("analyze",)) is True
    assert store.save_call({**rec, "caller": "someone else"}, ("analyze",)) is False
    assert store.get_call("c1")["caller"] == "5551234"  # type: ignore[index]
    assert [j["call_id"] for j in store.pending_jobs()] == ["c1"]
    with sqlite3.connect(tmp_path / "calls.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"
    assert store.find_call("c") == "c1"


def test_an_analysis_is_stored_once_and_completion_fires_once(store: Store) -> None:
    store.save_call(record("c1", ["hi"]))
    assert store.save_analysis("c1", "summary", {"summary": "first"})
    assert not store.save_analysis("c1", "summary", {"summary": "second"})
    assert store.get_analyses("c1")["summary"]["result"]["summary"] == "first"
    assert store.mark_complete("c1") and not store.mark_complete("c1")


def test_cost_is_usage_times_prices() -> None:
    s = Settings(
        price_telephony_per_min=0.01,
        price_stt_per_min=0.006,
        price_llm_per_1k_tokens_in=0.5,
        price_llm_per_1k_tokens_out=1.5,
        price_tts_per_1k_chars=0.015,
    )
    usage = {"stt_seconds": 30.0, "llm_tokens_in": 2000, "llm_tokens_out": 500, "tts_chars": 1500}
    c = costs(usage, 90.0, s)
    expected = 1.5 * 0.01 + 0.5 * 0.006 + 2 * 0.5 + 0.5 * 1.5 + 1.5 * 0.015
    assert c["total"] == pytest.approx(expected)
    assert c["per_minute"] == pytest.approx(expected / 1.5)


def test_rollup_per_agent_and_day(store: Store) -> None:
    for i in range(3):
        rec = record(f"c{i}", ["hi"])
        rec["cost"] = {**rec["cost"], "total": 0.3}
        store.save_call(rec)
    (row,) = store.cost_rollup()
    assert row["agent"] == "shop" and row["calls"] == 3
    assert row["minutes"] == pytest.approx(4.5) and row["cost"] == pytest.approx(0.9)
    assert row["cost_per_minute"] == pytest.approx(0.2)


def test_sentiment_and_emotions_follow_the_words() -> None:
    rec = record("c1", ["This is ridiculous, I have been waiting again!", "Great, thank you."])
    out = analyses.sentiment(rec, Settings(), {})
    first, last = out["timeline"]
    assert first["sentiment"] < 0 < last["sentiment"]
    assert first["frustrated"] > 0.5 > last["frustrated"]
    assert last["satisfied"] > 0.5 > first["satisfied"]
    assert out["timeline"][0]["t"] == pytest.approx(1.5)


def test_the_live_reading_beside_the_words_alone() -> None:
    """Where the voice heard what the words do not say, the analysis says so."""
    says = ["My order has not come yet", "Thank you, that is perfect"]
    rec = record("c1", says)
    quiet = dict.fromkeys(("frustrated", "confused", "urgent", "satisfied"), 0.05)
    rec["emotions"] = [
        {"t": 1.5, "turn": 1, "text": says[0], "final": True, "announced": ["frustrated"],
         "scores": {**quiet, "frustrated": 0.8}},
        {"t": 5.5, "turn": 2, "text": says[1], "final": True, "announced": ["satisfied"],
         "scores": {**quiet, "satisfied": 0.9}},
    ]  # fmt: skip
    out = analyses.sentiment(rec, Settings(), {})
    compared = out["live_vs_words"]
    assert compared["frustrated"]["live_only"] == [says[0]]  # the voice, not the words
    assert compared["satisfied"]["live_only"] == [] and compared["satisfied"]["words_only"] == []
    assert compared["frustrated"]["live_max"] == 0.8
    assert len(out["live"]) == 2


def test_topics_cluster_calls_by_meaning_not_shared_words() -> None:
    """Calls on one subject in different words end in one cluster."""
    says = {
        "a": "My order has not arrived yet",
        "b": "Where is the package I bought last week?",
        "c": "The delivery never showed up",
        "d": "What time do you open on Saturday?",
        "e": "Are you open on Sunday afternoon?",
        "f": "When does the store close tonight?",
    }
    corpus = [record(k, [v]) for k, v in says.items()]
    known: dict[str, Any] = {}
    for rec in corpus:
        known[rec["id"]] = analyses.topics(rec, Settings(), {"corpus": corpus, "known": known})
    assert len(known["a"]["embedding"]) == 384
    vectors = {k: np.asarray(v["embedding"]) for k, v in known.items()}
    clusters = analyses.cluster_calls(vectors, says)
    assert clusters["a"] == clusters["b"] == clusters["c"]
    assert clusters["d"] == clusters["e"] == clusters["f"] != clusters["a"]
    assert known["f"]["cluster"] == clusters["f"]  # the last call sees the whole picture


def test_qa_flags_what_a_reviewer_wants_to_see() -> None:
    rec = record(
        "c1",
        ["first", "second"],
        transfers=["operator"],
        review_flags=[{"reason": "caller asked for a refund", "at": 0}],
    )
    rec["turns"][2]["started_at"] += 20  # a long silence before the second exchange
    out = analyses.qa(rec, Settings(), {"transcript": {"asr_confidence": 0.4}})
    kinds = sorted(f["kind"] for f in out["flags"])
    assert kinds == ["escalation", "flagged", "long_silence", "low_asr_confidence"]
    assert analyses.qa(record("c2", ["fine"]), Settings(), {"transcript": None})["flags"] == []


def test_a_corrupt_recording_is_a_permanent_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    rec = record("c1", ["hi"], recordings={"caller": str(bad)})
    with pytest.raises(analyses.PermanentError, match="unreadable"):
        analyses.transcript(rec, Settings(), {})
    rec = record("c1", ["hi"], recordings={"caller": str(tmp_path / "gone.wav")})
    with pytest.raises(analyses.PermanentError, match="missing"):
        analyses.transcript(rec, Settings(), {})


def test_summary_names_the_disposition_and_action_items() -> None:
    rec = record(
        "c1",
        ["Can I talk to a person?"],
        transfers=["operator"],
        tool_calls=[{"name": "lookup_order", "arguments": '{"order_number": "427"}'}],
    )
    assert analyses.disposition(rec) == "escalated"
    assert analyses.action_items(rec) == [
        'Follow up on lookup_order {"order_number": "427"}',
        "Human follow-up by operator",
    ]
    assert analyses.disposition(record("c2", [])) == "no_conversation"


async def test_outbox_keeps_jobs_while_redis_is_down(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer()
    settings = Settings(redis_url=server.url)
    store.save_call(record("c1", ["hi"]), ("analyze",))
    store.save_call(record("c2", ["hi"]), ("analyze",))
    outbox = Outbox(store, settings)
    with caplog.at_level(logging.WARNING):
        assert await outbox.flush() == 0
        assert await outbox.flush() == 0
    assert caplog.text.count("queue_unavailable") == 1  # one line per outage
    assert len(store.pending_jobs()) == 2
    await asyncio.to_thread(server.start)
    try:
        assert await outbox.flush() == 2
        assert store.pending_jobs() == []
        import redis as redis_py

        queued = redis_py.Redis(port=server.port).llen("calls")
        assert queued == 2  # two analyze jobs on the "calls" queue
    finally:
        await asyncio.to_thread(server.stop)
    await asyncio.sleep(0)


async def test_bridges_sharing_a_store_queue_each_job_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = Store(url), Store(url)
    first.migrate()
    for i in range(20):
        (first if i % 2 else second).save_call(record(f"c{i}", ["hi"]), ("analyze",))
    server = RedisServer()
    await asyncio.to_thread(server.start)
    try:
        settings = Settings(redis_url=server.url)
        a, b = Outbox(first, settings), Outbox(second, settings)
        # both bridges' outboxes see all twenty pending jobs at once
        sent = await asyncio.gather(a.flush(), b.flush(), a.flush(), b.flush())
        assert sum(sent) == 20
        import redis as redis_py

        assert redis_py.Redis(port=server.port).llen("calls") == 20
        assert first.pending_jobs() == [] and first.pending_count() == 0

        # a bridge that claimed a job and died before sending it: once the
        # claim is stale the job is pending again, and goes out once
        second.save_call(record("late", ["hi"]), ("analyze",))
        (job,) = second.pending_jobs()
        assert second.claim_job(job["id"]) and not first.claim_job(job["id"])
        assert first.pending_jobs() == []
        monkeypatch.setattr("voiceos_switch.records.store.CLAIM_STALE_S", -1.0)
        assert [j["call_id"] for j in first.pending_jobs()] == ["late"]
        assert await a.flush() == 1
        assert redis_py.Redis(port=server.port).llen("calls") == 21
    finally:
        await asyncio.to_thread(server.stop)
        first.close()
        second.close()

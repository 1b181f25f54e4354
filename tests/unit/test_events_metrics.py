"""The per-call event bus (publishing never waits for a subscriber) and the
bridge's Prometheus metrics, scraped over HTTP and checked against the
call's record."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.unit.test_emotion_calls import ANGRY, CALM, REPLIES, clips, run_call, scripted_agent
from tests.unit.test_freeswitch_faults import bridge, until
from voiceos_switch import Agent, Call
from voiceos_switch import events as ev
from voiceos_switch.errors import ConfigurationError
from voiceos_switch.metrics import server_port
from voiceos_switch.settings import Settings

# --- the bus -------------------------------------------------------------------------


async def test_a_stuck_subscriber_loses_its_oldest_events_and_nobody_waits() -> None:
    bus = ev.EventBus("c1")
    got: list[ev.Event] = []
    release = asyncio.Event()

    async def stuck(event: ev.Event) -> None:
        await release.wait()

    slow = bus.subscribe(stuck, "stuck", maxsize=10)
    bus.subscribe(got.append, "quick")
    started = time.perf_counter()
    for i in range(100):
        bus.publish(ev.Dtmf("c1", str(i % 10)))
    assert time.perf_counter() - started < 0.05  # publishing never waited
    assert await bus.drain(0.2) is False  # the stuck one is still stuck...
    assert len(got) == 100  # ...and the quick one had everything, in order
    assert [e.digit for e in got[:3]] == ["0", "1", "2"]  # type: ignore[attr-defined]
    assert slow.dropped == 90  # the ten newest kept (published before it ran at all)
    release.set()
    assert await bus.drain(5)
    await bus.close()


async def test_a_failing_subscriber_is_logged_and_the_rest_go_on() -> None:
    bus = ev.EventBus("c1")
    got: list[ev.Event] = []

    def broken(event: ev.Event) -> None:
        raise RuntimeError("boom")

    bad = bus.subscribe(broken)
    bus.subscribe(got.append)
    bus.publish(ev.Dtmf("c1", "5"))
    bus.publish(ev.Dtmf("c1", "6"))
    assert await bus.drain(5)
    assert bad.errors == 2 and len(got) == 2
    await bus.close()


def test_events_have_a_json_form() -> None:
    event = ev.TurnLatency("c1", 1, {"first_frame_sent": 201.5}, "fact", "turn_model")
    d = ev.as_dict(event)
    assert d["kind"] == "turn_latency" and d["call_id"] == "c1" and d["index"] == 1
    assert d["marks_ms"] == {"first_frame_sent": 201.5} and isinstance(d["at"], float)


# --- metrics ---------------------------------------------------------------------------


async def scrape(port: int, token: str | None = None) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_are_scraped_and_agree_with_the_call_record(tmp_path: Path) -> None:
    audio = await clips()
    ended: list[Call] = []
    token = "metrics-token-0123456789"

    def make(s: Settings) -> Agent:
        s = s.model_copy(update={"metrics": "127.0.0.1:0", "metrics_token": SecretStr(token)})
        agent, _ = scripted_agent(s, audio, REPLIES, ended)
        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        port = server_port(agent.metrics_server)
        status, text = await scrape(port, token)
        assert status == 200
        assert samples(text)[("voiceos_active_calls", ())] == 0
        await run_call(standin, [audio[CALM], audio[CALM]])
        await until(lambda: ended, 30, "the call never ended")
        status, body = await scrape(port)  # no token
        assert status == 401 and "voiceos" not in body
        status, body = await scrape(port, "wrong-token")
        assert status == 401 and "voiceos" not in body
        await until(lambda: agent.metrics.active_calls._value.get() == 0, 10, "still active")
        status, text = await scrape(port, token)
        record = agent.store.get_call(ended[0].id)
    assert status == 200 and record is not None
    got = samples(text)
    assert got[("voiceos_calls_total", (("outcome", record["end_reason"]),))] == 1
    assert got[("voiceos_active_calls", ())] == 0
    # the response-time histogram holds exactly the record's turns
    responses = [t["first_frame_sent"] for t in record["latency"] if t["first_frame_sent"]]
    assert len(responses) == 2
    stage = (("stage", "first_frame_sent"),)
    assert got[("voiceos_turn_latency_seconds_count", stage)] == len(responses)
    assert got[("voiceos_turn_latency_seconds_sum", stage)] == pytest.approx(
        sum(responses) / 1000, abs=0.002
    )
    under = got[
        ("voiceos_turn_latency_seconds_bucket", (("le", "5.0"), ("stage", "first_frame_sent")))
    ]
    assert under == sum(1 for r in responses if r <= 5000)
    # no label names a call
    assert ended[0].id not in text


async def test_metrics_beyond_loopback_need_a_token(tmp_path: Path) -> None:
    agent = Agent(settings=Settings(audiosocket="127.0.0.1:0", metrics="0.0.0.0:0"))
    agent._models_loaded = True
    with pytest.raises(ConfigurationError, match="VOICEOS_METRICS_TOKEN"):
        await agent.run(control=False)


async def test_a_fallback_is_reported_to_the_call_it_happened_in(tmp_path: Path) -> None:
    """The model chain is shared by every call; its primary fails for one
    caller's words only. That call gets the fallback event (and the metric
    counts it); the call beside it, at the same time, gets none."""
    from tests.unit.test_conversation import ScriptedLLM
    from voiceos_switch.providers.fallback import FallbackLLM
    from voiceos_switch.providers.llm import LLMError

    audio = await clips()
    ended: list[Call] = []
    seen: dict[str, list[ev.Event]] = {}
    token = "metrics-token-0123456789"

    def make(s: Settings) -> Agent:
        s = s.model_copy(update={"metrics": "127.0.0.1:0", "metrics_token": SecretStr(token)})
        agent, _ = scripted_agent(s, audio, REPLIES, ended)
        primary = ScriptedLLM({ANGRY: LLMError("primary is down")}, name="primary")
        agent._llm = FallbackLLM([primary, ScriptedLLM({}, name="backup")])
        agent.subscribers.append(lambda e: seen.setdefault(e.call_id, []).append(e))
        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        await asyncio.gather(run_call(standin, [audio[ANGRY]]), run_call(standin, [audio[CALM]]))
        await until(lambda: len(ended) == 2, 30, "the calls never ended")
        status, text = await scrape(server_port(agent.metrics_server), token)
    by_words = {next(t.text for t in c.transcript if t.role == "caller"): c.id for c in ended}
    failed = [e for e in seen[by_words[ANGRY]] if isinstance(e, ev.ProviderFallback)]
    assert failed and all(
        (e.stage, e.provider, e.next) == ("llm", "primary", "backup") for e in failed
    )
    assert "primary is down" in failed[0].error
    assert not [e for e in seen[by_words[CALM]] if isinstance(e, ev.ProviderFallback)]
    assert status == 200
    key = ("voiceos_provider_fallbacks_total", (("provider", "primary"), ("stage", "llm")))
    assert samples(text)[key] == len(failed)

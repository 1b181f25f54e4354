"""Every call's events on one Redis Stream (a real redis-server), from
several bridges; a Redis that is down costs the calls nothing and the
stream picks up again when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.freeswitch_standin import FreeSwitchStandin
from tests.redis_server import RedisServer, free_port
from tests.unit.test_emotion_calls import CALM, REPLIES, clips, run_call, scripted_agent
from tests.unit.test_freeswitch_faults import bridge, until
from voiceos_switch import Agent, Call
from voiceos_switch.eventstream import read_events
from voiceos_switch.settings import Settings


def agent_on(
    redis_url: str,
    name: str,
    audio: dict[str, bytes],
    ended: list[Call],
    database_url: str | None = None,
) -> Any:
    def make(s: Settings) -> Agent:
        update: dict[str, Any] = {"redis_url": redis_url, "bridge_name": name}
        if database_url:
            update["database_url"] = database_url
        s = s.model_copy(update=update)
        agent, _ = scripted_agent(s, audio, REPLIES, ended)
        return agent

    return make


def kinds_of(entries: list[tuple[str, dict[str, Any]]], call_id: str) -> list[str]:
    return [e["kind"] for _, e in entries if e["call_id"] == call_id]


async def test_two_bridges_one_stream(tmp_path: Path) -> None:
    redis = RedisServer().start()
    audio = await clips()
    ended_a: list[Call] = []
    ended_b: list[Call] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            a_dir, b_dir = tmp_path / "a", tmp_path / "b"
            a_dir.mkdir()
            b_dir.mkdir()
            sa, _ = await stack.enter_async_context(
                bridge(a_dir, agent_on(redis.url, "bridge-a", audio, ended_a))
            )
            sb, _ = await stack.enter_async_context(
                bridge(b_dir, agent_on(redis.url, "bridge-b", audio, ended_b))
            )
            await asyncio.gather(run_call(sa, [audio[CALM]]), run_call(sb, [audio[CALM]]))
            await until(lambda: ended_a and ended_b, 30, "the calls never ended")

            async def both_ended() -> list[tuple[str, dict[str, Any]]]:
                while True:
                    entries = await read_events(redis.url)
                    ids = {ended_a[0].id, ended_b[0].id}
                    done = {e["call_id"] for _, e in entries if e["kind"] == "call_ended"}
                    if ids <= done:
                        return entries
                    await asyncio.sleep(0.1)

            entries = await asyncio.wait_for(both_ended(), 30)
        for call, name in ((ended_a[0], "bridge-a"), (ended_b[0], "bridge-b")):
            kinds = kinds_of(entries, call.id)
            assert kinds[0] == "call_started" and kinds[-1] == "call_ended", kinds
            assert kinds.count("transcript") == 3  # greeting, the caller, the answer
            assert "turn_latency" in kinds and "caller_speech_started" in kinds
            assert {e["bridge"] for _, e in entries if e["call_id"] == call.id} == {name}
        said = [e["text"] for _, e in entries if e["kind"] == "transcript"]
        assert said.count(CALM) == 2
        # a viewer that reconnects reads on from the last entry it saw
        middle = entries[len(entries) // 2][0]
        rest = await read_events(redis.url, after=middle)
        assert [i for i, _ in rest] == [i for i, _ in entries[len(entries) // 2 + 1 :]]
    finally:
        redis.stop()


async def test_redis_down_costs_the_call_nothing_and_the_stream_recovers(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    audio = await clips()
    ended: list[Call] = []
    redis = RedisServer(port)
    try:
        async with bridge(tmp_path, agent_on(url, "bridge-a", audio, ended)) as (standin, agent):
            await run_call(standin, [audio[CALM]])
            await until(lambda: ended, 30, "the call never ended")
            call = ended[0]
            said = [(t.role, t.text) for t in call.transcript]
            assert said[1] == ("caller", CALM) and said[2] == ("agent", REPLIES[0]), said
            stream = agent.event_stream
            await until(lambda: stream.lost > 0 and not stream.up, 10, "nothing counted lost")
            redis.start()
            await run_call(standin, [audio[CALM]])
            await until(lambda: len(ended) == 2, 30, "the second call never ended")
            await until(lambda: stream.up, 30, "the stream never came back")

            async def second_ended() -> list[tuple[str, dict[str, Any]]]:
                while True:
                    entries = await read_events(url)
                    if any(e["kind"] == "call_ended" for _, e in entries):
                        return entries
                    await asyncio.sleep(0.1)

            entries = await asyncio.wait_for(second_ended(), 30)
        assert {e["call_id"] for _, e in entries} == {ended[1].id}
        assert kinds_of(entries, ended[1].id)[-1] == "call_ended"
    finally:
        redis.stop()


async def test_the_standalone_dashboard_follows_every_bridge_and_resumes() -> None:
    """`voiceos-switch dashboard`'s feed: what two bridges append, in order;
    a viewer resumes after the id it last saw, even one further back than
    the dashboard keeps in memory (then it is read from the stream)."""
    from voiceos_switch import events as ev
    from voiceos_switch.dashboard.feed import StreamFeed
    from voiceos_switch.eventstream import EventStream

    redis = RedisServer().start()
    a = EventStream(redis.url, bridge="bridge-a")
    b = EventStream(redis.url, bridge="bridge-b")
    feed = StreamFeed(redis.url, keep=3)
    try:
        await a.publish(ev.CallStarted("call-a", "asterisk"))
        await b.publish(ev.CallStarted("call-b", "freeswitch"))
        got = await feed.read(None, timeout=30)  # what the stream held before it started
        assert [(e["call_id"], e["bridge"]) for _, e in got] == [
            ("call-a", "bridge-a"),
            ("call-b", "bridge-b"),
        ]
        first_id = got[0][0]
        # new entries reach a viewer waiting on the last id
        waiting = asyncio.create_task(feed.read(got[-1][0], timeout=30))
        await b.publish(ev.Dtmf("call-b", "5"))
        new = await asyncio.wait_for(waiting, 30)
        assert [e["kind"] for _, e in new] == ["dtmf"]
        for digit in "1234":
            await a.publish(ev.Dtmf("call-a", digit))

        async def caught_up(after: str) -> list[tuple[str, dict[str, Any]]]:
            """What a viewer gets, page by page, until nothing is new."""
            seen: list[tuple[str, dict[str, Any]]] = []
            while got := await feed.read(after, timeout=0.5):
                seen += got
                after = got[-1][0]
            return seen

        async def four_kept() -> None:
            while [json.loads(t).get("digit") for _, t in feed._ring.entries] != ["2", "3", "4"]:  # noqa: ASYNC110 - polled: the feed's own reader fills it
                await asyncio.sleep(0.05)

        await asyncio.wait_for(four_kept(), 30)
        # the first id is older than the three kept: the rest is read from the stream
        behind = await caught_up(first_id)
        assert [e.get("digit") for _, e in behind] == [None, "5", "1", "2", "3", "4"]
        assert feed.error is None
    finally:
        await feed.close()
        await a.close()
        await b.close()
        redis.stop()


def _start_bridge(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "voiceos_switch.cli", "serve"]
            + ["--agent", "tests.bridge_process:agent"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


@contextlib.asynccontextmanager
async def bridge_process(
    tmp_path: Path, name: str, redis_url: str, database_url: str
) -> AsyncIterator[FreeSwitchStandin]:
    """A bridge as its own process (``voiceos-switch serve`` with the scripted
    agent), behind its own FreeSWITCH stand-in."""
    from tests.unit.test_freeswitch_faults import PASSWORD, TOKEN

    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    esl_port = await standin.start()
    port = free_port()
    env = dict(
        os.environ,
        VOICEOS_AUDIOSOCKET="127.0.0.1:0",
        VOICEOS_FREESWITCH_STREAM=f"127.0.0.1:{port}",
        VOICEOS_STREAM_TOKEN=TOKEN,
        VOICEOS_ESL_PORT=str(esl_port),
        VOICEOS_ESL_PASSWORD=PASSWORD,
        VOICEOS_STATE_DIR=str(tmp_path / "state"),
        VOICEOS_REDIS_URL=redis_url,
        VOICEOS_DATABASE_URL=database_url,
        VOICEOS_BRIDGE_NAME=name,
    )
    log_path = tmp_path / "bridge.log"
    proc = await asyncio.to_thread(_start_bridge, env, log_path)
    try:

        def listening() -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        await until(listening, 120, f"bridge {name} never listened")
        standin.stream_url = f"ws://127.0.0.1:{port}/{TOKEN}"
        yield standin
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        await standin.close()


async def test_one_dashboard_over_two_bridge_processes(tmp_path: Path) -> None:
    """`voiceos-switch dashboard` (its app, over the Redis Stream and the
    store both bridges write to) with two bridges, each its own process:
    both bridges' calls are listed, and their events reach a viewer, each
    with its bridge's name."""
    from tests.unit.test_dashboard import TOKEN, Client, Viewer
    from voiceos_switch.dashboard import start_server
    from voiceos_switch.dashboard.app import create_app
    from voiceos_switch.dashboard.feed import StreamFeed
    from voiceos_switch.records.store import Store

    redis = RedisServer().start()
    db = f"sqlite:///{tmp_path / 'calls.db'}"
    store = Store(db)
    store.migrate()
    feed = StreamFeed(redis.url)
    server = await start_server(create_app(lambda: store, feed, TOKEN), "127.0.0.1:0")
    audio = await clips()
    try:
        async with (
            Viewer(server.port) as viewer,
            bridge_process(tmp_path / "a", "bridge-a", redis.url, db) as sa,
            bridge_process(tmp_path / "b", "bridge-b", redis.url, db) as sb,
        ):
            calls = await asyncio.gather(run_call(sa, [audio[CALM]]), run_call(sb, [audio[CALM]]))
            ids = {calls[0].uuid: "bridge-a", calls[1].uuid: "bridge-b"}
            seen: dict[str, set[str]] = {}
            ends: set[str] = set()
            while ends != set(ids):
                _, event = await viewer.next_event(60)
                seen.setdefault(event["call_id"], set()).add(event["bridge"])
                if event["kind"] == "call_ended":
                    ends.add(event["call_id"])
        assert {c: seen[c] for c in ids} == {c: {b} for c, b in ids.items()}
        status, _, body = await Client(f"http://127.0.0.1:{server.port}").get(
            "/api/calls", Authorization=f"Bearer {TOKEN}"
        )
        assert status == 200
        rows = {r["id"]: r for r in json.loads(body)["calls"]}
        assert set(ids) <= set(rows)
        assert all(rows[c]["turns"] >= 2 for c in ids)  # greeting, caller, answer
    finally:
        await feed.close()
        await server.close()
        redis.stop()


async def test_the_dashboard_says_when_redis_is_down_and_recovers(tmp_path: Path) -> None:
    """Redis goes away under a viewer: the page is told (a status event
    naming the stream) within seconds; Redis back, it is told so, and the
    events appended since reach it."""
    from tests.unit.test_dashboard import TOKEN, Viewer
    from voiceos_switch import events as ev
    from voiceos_switch.dashboard import start_server
    from voiceos_switch.dashboard.app import create_app
    from voiceos_switch.dashboard.feed import StreamFeed
    from voiceos_switch.eventstream import EventStream
    from voiceos_switch.records.store import Store

    port = free_port()
    redis = RedisServer(port).start()
    url = redis.url
    store = Store(f"sqlite:///{tmp_path / 'calls.db'}")
    store.migrate()
    feed = StreamFeed(url)
    server = await start_server(create_app(lambda: store, feed, TOKEN), "127.0.0.1:0")
    bridge_stream = EventStream(url, bridge="bridge-a")
    try:
        async with Viewer(server.port) as viewer:
            kind, _, status = await viewer.next()
            assert kind == "status" and status["problem"] is None
            await bridge_stream.publish(ev.CallStarted("call-1", "asterisk"))
            _, first = await viewer.next_event(30)
            assert first["call_id"] == "call-1"
            redis.stop()
            while True:
                kind, _, status = await viewer.next(30)
                if kind == "status":
                    break
            assert status["problem"] and f"127.0.0.1:{port}" in status["problem"]
            redis.start()
            while True:
                kind, _, status = await viewer.next(60)
                if kind == "status" and status["problem"] is None:
                    break
            for _ in range(100):  # the bridge's own stream retries on its own clock
                await bridge_stream.publish(ev.Dtmf("call-1", "7"))
                if bridge_stream.up:
                    break
                await asyncio.sleep(0.1)
            _, after = await viewer.next_event(30)
            assert (after["kind"], after["digit"]) == ("dtmf", "7")
    finally:
        await bridge_stream.close()
        await feed.close()
        await server.close()
        redis.stop()

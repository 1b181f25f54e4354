"""Every call's events on one Redis Stream (a real redis-server), from
several bridges; a Redis that is down costs the calls nothing and the
stream picks up again when it is back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from tests.redis_server import RedisServer, free_port
from tests.unit.test_emotion_calls import CALM, REPLIES, clips, run_call, scripted_agent
from tests.unit.test_freeswitch_faults import bridge, until
from voiceos_switch import Agent, Call
from voiceos_switch.eventstream import read_events
from voiceos_switch.settings import Settings


def agent_on(redis_url: str, name: str, audio: dict[str, bytes], ended: list[Call]) -> Any:
    def make(s: Settings) -> Agent:
        s = s.model_copy(update={"redis_url": redis_url, "bridge_name": name})
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

"""The dialplan tries the bridges in turn, through the real Asterisk 22.

``VOICEOS_BRIDGE`` names several bridges. One that is down (nothing
listens), one that accepts and drops the connection, and one that is
draining (it has a call, and took its socket down) are passed over at once,
one that accepts and never answers (hung) after Asterisk's 2 s, and the
call reaches a bridge that takes it; a draining bridge's own call
goes on to its end. When no bridge takes a call the caller goes to a
person, not to silence.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.audiocheck import active_seconds, tone_seconds
from voiceos_switch import Agent, Call
from voiceos_switch.control.ami import AMIController
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import place_call, read_wav_mono16
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Running:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.ended: list[Call] = []
        self.stop, self.drain, self.ready = asyncio.Event(), asyncio.Event(), asyncio.Event()
        # (a call_started handler of its own would replace the greeting)
        agent.on("call_ended")(lambda call: self.ended.append(call))
        self.task: asyncio.Task[None] | None = None


@asynccontextmanager
async def running(port: int, tmp_path: Path) -> AsyncIterator[Running]:
    agent = Agent(
        settings=Settings(audiosocket=f"127.0.0.1:{port}", recordings_dir=tmp_path / f"rec{port}")
    )
    r = Running(agent)
    r.task = asyncio.create_task(agent.run(ready=r.ready, stop=r.stop, drain=r.drain))
    try:
        await asyncio.wait_for(r.ready.wait(), 120)
        # call control up: the bridge learns each call's rate from the PBX
        # and greets before the caller says a word
        assert agent.control is not None and await agent.control.wait_ready(10)
        yield r
    finally:
        r.stop.set()
        await asyncio.wait_for(r.task, 30)


async def until(check: object, limit: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


async def test_calls_pass_over_bridges_that_do_not_take_them(
    asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    dead, dropping, silent, first, second = (free_port() for _ in range(5))
    dropped: list[int] = []
    hung: list[int] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dropped.append(1)
        writer.close()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a hung bridge: takes the connection, reads, never sends a frame
        hung.append(1)
        while await reader.read(4096):
            pass
        writer.close()

    dropper = await asyncio.start_server(drop, "127.0.0.1", dropping)
    hanger = await asyncio.start_server(never_answer, "127.0.0.1", silent)
    log_from = asterisk.log_size()
    chain = "&".join(f"127.0.0.1:{p}" for p in (dead, dropping, silent, first, second))
    pbx = AsteriskSandbox(Settings(asterisk_bridges=chain, asterisk_bridge_order="in-order"))
    await asyncio.to_thread(pbx.restart)
    try:
        async with running(first, tmp_path) as a, running(second, tmp_path) as b:
            # a long call: the first bridge that takes calls gets it
            held = asyncio.create_task(place_call("100", delay=1.0, hold=14.0, timeout=120))
            await until(lambda: len(a.agent.calls) == 1, 60, "the call never reached a bridge")
            assert dropped == [1] and hung == [1] and not b.agent.calls
            # that bridge is told to go: it drains, keeping its call
            a.drain.set()
            await until(lambda: a.agent.runtime.draining, 10, "the bridge never drained")
            # the next call passes over it (and the others) to the second
            result = await place_call("100", delay=1.0, hold=3.0, timeout=120)
            assert result.answered and len(b.ended) == 1 and len(a.agent.calls) == 1
            heard, rate = read_wav_mono16(result.heard)  # type: ignore[arg-type]
            assert active_seconds(heard, rate) > 1.0, "the second bridge's greeting never came"
            # the draining bridge's call went on to its end, then the bridge stopped
            first_call = await asyncio.wait_for(held, 120)
            assert first_call.hangup_cause == "Normal Clearing"
            assert first_call.duration_s > 14.0  # the caller hung up, not the bridge
            assert len(a.ended) == 1
            await asyncio.wait_for(asyncio.shield(a.task), 30)  # type: ignore[arg-type]
            assert dropped == [1, 1] and hung == [1, 1]
            # the hung bridge cost each call Asterisk's 2 s, logged once a call
            stalls = [e for e in asterisk.log_errors(log_from) if "no activity on AudioSocket" in e]
            assert len(stalls) == 2 and f"127.0.0.1:{silent}" in stalls[0]

        # no bridge takes the call: the caller goes to a person
        watcher = AMIController(secret=asterisk.ami_secret())
        events: list[dict[str, str]] = []
        watcher.add_listener(lambda e: events.append(e) if e.get("Event") == "UserEvent" else None)
        watcher.start()
        assert await watcher.wait_ready(10)
        try:
            # (the hung bridge holds it 2 s first)
            result = await place_call("100", delay=0.5, hold=9.0, timeout=120)
        finally:
            await watcher.close()
        heard, rate = read_wav_mono16(result.heard)  # type: ignore[arg-type]
        assert tone_seconds(heard, rate, 440.0) > 1.0, "the caller was not put through to a person"
        assert any(e.get("UserEvent") == "VoiceosNoBridge" for e in events)
    finally:
        dropper.close()
        hanger.close()
        await asyncio.to_thread(asterisk.restart)

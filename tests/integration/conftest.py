"""Integration fixtures: the real, managed Asterisk 22 and a bridge in-process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from voiceos_switch import Agent, Call
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.settings import Settings


@pytest.fixture(scope="session")
def asterisk() -> Iterator[AsteriskSandbox]:
    if os.geteuid() != 0:
        pytest.fail("integration tests run a real Asterisk in a sandbox root: run them as root")
    sandbox = AsteriskSandbox(Settings())
    offset = sandbox.log_size()
    sandbox.restart()
    sandbox.boot_log_offset = offset  # type: ignore[attr-defined]
    yield sandbox
    sandbox.down()


@dataclass
class Bridge:
    agent: Agent
    settings: Settings
    ended: list[Call] = field(default_factory=list)
    call_ended: asyncio.Event = field(default_factory=asyncio.Event)

    def recording(self, call: Call, leg: str) -> Path:
        assert self.settings.recordings_dir is not None
        return self.settings.recordings_dir / f"{call.id}-{leg}.wav"

    async def wait_calls(self, n: int, timeout: float = 10.0) -> list[Call]:
        async def enough() -> None:
            while len(self.ended) < n:
                self.call_ended.clear()
                await self.call_ended.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.ended


@pytest.fixture
async def bridge(asterisk: AsteriskSandbox, tmp_path: Path) -> AsyncIterator[Bridge]:
    settings = Settings(recordings_dir=tmp_path / "recordings")
    agent = Agent(settings=settings)
    b = Bridge(agent, settings)

    @agent.on("call_ended")
    def ended(call: Call) -> None:
        b.ended.append(call)
        b.call_ended.set()

    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 30)
    assert agent.control is not None and await agent.control.wait_ready(10)
    yield b
    stop.set()
    await asyncio.wait_for(task, 10)

"""An agent serving the managed Asterisk for the length of a test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from voiceos_switch import Agent


@contextlib.asynccontextmanager
async def serving(
    agent: Agent, on_handoff: Callable[[dict[str, str]], None] | None = None
) -> AsyncIterator[Agent]:
    """``agent`` runs (AudioSocket and AMI, connected) inside the block;
    ``on_handoff`` gets every ``VoiceosHandoff`` UserEvent Asterisk sends."""
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 180)
        assert agent.control is not None and await agent.control.wait_ready(10)
        if on_handoff is not None:

            def on_ami(event: dict[str, str]) -> None:
                if event.get("Event") == "UserEvent" and event.get("UserEvent") == "VoiceosHandoff":
                    on_handoff(event)

            agent.control.add_listener(on_ami)
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

"""agent.deploy on the managed Asterisk: the number's routing is installed
and the dialplan reloaded while Asterisk runs; a real call to that number
reaches the agent, and a call over the admission limit is refused by the
bridge and goes to a person instead of waiting in silence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voiceos_switch import Agent, Call
from voiceos_switch.control.ami import AMIController
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import place_call
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration


async def test_a_deployed_number_reaches_the_agent_and_the_limit_holds(
    asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    agent = Agent(settings=Settings(recordings_dir=tmp_path / "rec"))
    numbers = asterisk.host_path("etc/asterisk/voiceos_numbers.conf")
    ended: list[Call] = []
    agent.on("call_ended")(ended.append)
    try:
        d = agent.deploy("+1 888 555 0100", max_concurrent_calls=1, serve=False)
        assert d.written == [numbers]
        shown = asterisk.cli("dialplan show +18885550100@from-carrier")
        assert "Gosub(voiceos-agent,s,1(${EXTEN}))" in shown
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(agent.run(ready=ready, stop=stop))
        await asyncio.wait_for(ready.wait(), 60)
        assert agent.server.max_calls == 1
        ami = AMIController(secret=asterisk.ami_secret())
        refused: list[dict[str, str]] = []
        ami.add_listener(
            lambda e: refused.append(e) if e.get("UserEvent") == "VoiceosNoBridge" else None
        )
        ami.start()
        assert await ami.wait_ready(10)
        try:
            # two calls at once: the first is the agent's, the second is over
            # the limit and goes to the default human target
            first, second = await asyncio.gather(
                place_call("+18885550100", delay=3.0, hold=2.0),
                place_call("+18885550100", delay=3.5, hold=2.0),
            )
        finally:
            await ami.close()
            stop.set()
            await asyncio.wait_for(task, 30)
        assert first.answered and second.answered
        assert [c.called for c in ended] == ["+18885550100"]
        assert len(refused) == 1 and agent.server.stats.refused == 1
    finally:
        numbers.unlink(missing_ok=True)
        asterisk.cli("dialplan reload")

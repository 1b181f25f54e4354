"""FreeSWITCH (the stand-in): a caller who hangs up ends the call on both
sides. The whole conversation runs in test_pbx_conversation.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.freeswitch_standin import FreeSwitchStandin
from voiceos_switch import Call
from voiceos_switch.demo import demo_agent
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "fs-conversation-token-0123456789"
PASSWORD = "fs-conversation-password"


async def _wait(cond: object, timeout: float, what: str) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_caller_who_hangs_up_ends_the_call(tmp_path: Path) -> None:
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    esl_port = await standin.start()
    settings = Settings(
        freeswitch_stream="127.0.0.1:0",
        stream_token=TOKEN,
        esl_port=esl_port,
        esl_password=PASSWORD,
    )
    agent = demo_agent(settings, voice="espeak")
    ended: list[Call] = []
    agent.on("call_ended")(lambda call: ended.append(call))
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    try:
        await asyncio.wait_for(ready.wait(), 180)
        standin.stream_url = agent.stream_server.url()
        call = await standin.place_call([], hold_s=3.0)  # hangs up after 3 s
        await _wait(lambda: bool(ended), 15, "the end of the call")
        assert call.hung_up == "NORMAL_CLEARING"
        assert not agent.stream_server.calls and not agent.calls
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await standin.close()

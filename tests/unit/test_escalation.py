"""A caller who asks for a person, through the whole agent (the FreeSWITCH
stand-in as the PBX): handed over with the transcript when the user wrote
nothing for it, left to the user's handler when there is one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.unit.test_conversation import ScriptedLLM, ScriptedSTT, speech
from tests.unit.test_freeswitch_faults import bridge, until
from voiceos_switch import Agent, Call
from voiceos_switch.settings import Settings

REQUEST = "Hello there, I would like to talk to a person about my order, please."
OWN_ANSWER = "I can help with that myself."


@pytest.mark.parametrize("handled", [False, True])
async def test_asking_for_a_person(tmp_path: Path, handled: bool) -> None:
    asked: list[tuple[str, str]] = []
    ended: list[Call] = []
    pcm = await speech(REQUEST)

    def make(s: Settings) -> Agent:
        agent = Agent(model="local", settings=s, greeting="Hello.", turn_detection=False)
        stt = ScriptedSTT([])
        stt.learn(pcm, REQUEST)
        agent._llm, agent._stt = ScriptedLLM([OWN_ANSWER]), stt
        agent._models_loaded = True  # scripted: nothing to load

        @agent.on("call_ended")
        def done(call: Call) -> None:
            ended.append(call)

        if handled:

            @agent.on("escalation_requested")
            def escalate(call: Call, source: str) -> None:
                asked.append((call.id, source))

        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        call = await standin.place_call([(1.5, pcm)], hold_s=12.0)
        if handled:
            await until(lambda: asked, 30, "the handler was never called")
            assert asked == [(call.uuid, "speech")]
            await asyncio.wait_for(call.done.wait(), 30)
            assert call.transferred_to is None  # the user's handler decides
        else:
            await until(lambda: call.transferred_to is not None, 30, "never handed over")
            assert call.transferred_to == "operator"
            assert "talk to a person" in call.variables.get("voiceos_transcript", "")
        await until(lambda: ended, 30, "the call never ended")
        said = [t.text for t in ended[0].transcript if t.role == "agent"]
        assert OWN_ANSWER not in said  # no answer of its own
        assert ("Connecting you to a person." in said) is not handled

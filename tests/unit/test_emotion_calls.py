"""The caller's emotion on a call, through the whole agent (the FreeSWITCH
stand-in as the PBX; the caller speaks when it has heard the agent): the
SDK's triggers and handlers in the shape the product is sold with."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from tests.freeswitch_standin import FreeSwitchStandin, StandinCall, hears
from tests.unit.test_conversation import ScriptedLLM, ScriptedSTT, speech
from tests.unit.test_freeswitch_faults import bridge, until
from voiceos_switch import Agent, Call, Emotion, transfer_to_human
from voiceos_switch.providers.llm import ToolCallRequest
from voiceos_switch.settings import Settings

CALM = "Hi, I'm calling about the parcel I ordered last week."
ANGRY = "This is the third time I have called about it, this is ridiculous."
PERSON = "Can I talk to a person please?"
LINE = "I understand this is frustrating. Let me help."
REPLIES = ["Let me look that up for you.", "I will check on the parcel right now."]


def louder(pcm: bytes, db: float) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * 10 ** (db / 20)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


async def converse(call: StandinCall, lines: list[bytes]) -> None:
    """Greeting, then each line once the agent has answered the last."""
    for pcm in lines:
        await hears(call, "heard", 300)
        await hears(call, "quiet", 1200)
        call.say(pcm)
        await asyncio.sleep(len(pcm) / 16000)


async def clips() -> dict[str, bytes]:
    return {
        CALM: await speech(CALM),
        ANGRY: louder(await speech(ANGRY), 6),
        PERSON: await speech(PERSON),
    }


def scripted_agent(
    s: Settings,
    audio: dict[str, bytes],
    replies: list[Any],
    ended: list[Call] | None = None,
    **options: Any,
) -> tuple[Agent, ScriptedLLM]:
    """An agent on scripted models: the recogniser knows the clips, the
    model says ``replies`` in order; ``ended`` collects the finished calls."""
    agent = Agent(model="local", settings=s, greeting="Hello.", turn_detection=False, **options)
    stt = ScriptedSTT([])
    for text, pcm in audio.items():
        stt.learn(pcm, text)
    llm = ScriptedLLM(replies)
    agent._llm, agent._stt = llm, stt
    agent._models_loaded = True  # scripted: nothing to load
    if ended is not None:
        agent.on("call_ended")(ended.append)
    return agent, llm


async def run_call(
    standin: FreeSwitchStandin, lines: list[bytes], until_done: bool = False
) -> StandinCall:
    call = await standin.place_call([], hold_s=120.0)
    caller = asyncio.create_task(converse(call, lines))
    try:
        await asyncio.wait_for(asyncio.shield(caller), 90)
        if not until_done:
            await hears(call, "heard", 300)  # the answer to the last line
            await hears(call, "quiet", 1200)
            await standin.hang_up(call.uuid)
    except AssertionError:
        if not until_done:
            raise
    await asyncio.wait_for(call.done.wait(), 60)
    return call


async def test_a_frustrated_caller_hears_the_trigger_line_and_the_handlers_see_it(
    tmp_path: Path,
) -> None:
    audio = await clips()
    seen: list[Emotion] = []
    ended: list[Call] = []
    llm: list[ScriptedLLM] = []

    def make(s: Settings) -> Agent:
        agent, model = scripted_agent(
            s, audio, REPLIES, ended, emotion_triggers={"frustrated": lambda: LINE, "urgency": 0.7}
        )
        llm.append(model)

        @agent.on("emotion_detected")
        def handle_emotion(call: Call, emotion: Emotion) -> None:
            seen.append(emotion)
            if emotion.type == "frustrated" and emotion.intensity > 0.5:
                call.flag_for_review()

        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        await run_call(standin, [audio[CALM], audio[ANGRY]])
        await until(lambda: ended, 30, "the call never ended")
    call = ended[0]
    said = [(t.role, t.text) for t in call.transcript]
    assert [r for r, _ in said] == ["agent", "caller", "agent", "caller", "agent"], said
    assert not said[2][1].startswith(LINE)  # the calm turn: no trigger
    assert said[4][1].startswith(LINE), said[4]  # the frustrated one: the line first...
    assert REPLIES[1] in said[4][1]  # ...then the answer
    # the model was told what the agent had said
    asked = [m["content"] for m in llm[0].seen[-1] if m["role"] == "user"]
    assert "sounds frustrated" in asked[-1] and LINE in asked[-1]
    assert [e.type for e in seen] == ["frustrated"]
    assert seen[0].text == ANGRY and 0.0 < seen[0].intensity <= 1.0
    assert any("third time" in c or "ridiculous" in c for c in seen[0].cues)
    assert [f.reason for f in call.review_flags] == ["flagged"]
    # the timeline is in the call's record: both caller turns, the second announced
    full = agent.store.get_call(call.id)
    assert full is not None
    timeline = [e for e in full["emotions"] if e["final"]]
    assert [e["announced"] for e in timeline] == [[], ["frustrated"]]
    assert timeline[1]["scores"]["frustrated"] > timeline[0]["scores"]["frustrated"]


async def test_escalate_action_hands_the_caller_over(tmp_path: Path) -> None:
    audio = await clips()
    asked: list[str] = []
    ended: list[Call] = []

    def make(s: Settings) -> Agent:
        agent, _ = scripted_agent(
            s, audio, REPLIES, ended, emotion_triggers={"frustrated": "escalate"}
        )

        @agent.on("escalation_requested")
        def handle_escalation(call: Call, source: str) -> None:
            asked.append(source)
            agent.transfer_to_human(call, include_transcript=True)  # not awaited: it runs

        return agent

    async with bridge(tmp_path, make) as (standin, _agent):
        call = await run_call(standin, [audio[CALM], audio[ANGRY]], until_done=True)
        await until(lambda: ended, 30, "the call never ended")
    assert asked == ["emotion"]
    assert call.transferred_to == "operator"
    assert "third time" in call.variables.get("voiceos_transcript", "")
    said = [t.text for t in ended[0].transcript if t.role == "agent"]
    assert REPLIES[1] not in said  # no answer of its own to the angry turn


async def test_the_sdk_shape_a_one_argument_handler_hands_over(tmp_path: Path) -> None:
    """``def handle_escalation(call): agent.transfer_to_human(call, ...)``:
    a plain function of the call alone, the hand-off not awaited."""
    audio = await clips()

    def make(s: Settings) -> Agent:
        agent, _ = scripted_agent(s, audio, REPLIES)

        @agent.on("escalation_requested")
        def handle_escalation(call: Call) -> None:
            agent.transfer_to_human(call, include_transcript=True)

        return agent

    async with bridge(tmp_path, make) as (standin, _agent):
        call = await run_call(standin, [audio[PERSON]], until_done=True)
    assert call.transferred_to == "operator"
    assert "person" in call.variables.get("voiceos_transcript", "")


async def test_the_model_can_hand_over_with_the_transfer_tool(tmp_path: Path) -> None:
    audio = await clips()
    ended: list[Call] = []

    def make(s: Settings) -> Agent:
        request = ToolCallRequest("t1", "transfer_to_human", '{"reason": "wants a refund"}')
        replies = [request, "This must not be said."]
        agent, _ = scripted_agent(s, audio, replies, ended, tools=[transfer_to_human])
        return agent

    async with bridge(tmp_path, make) as (standin, _agent):
        call = await run_call(standin, [audio[CALM]], until_done=True)
        await until(lambda: ended, 30, "the call never ended")
    assert call.transferred_to == "operator"
    said = [t.text for t in ended[0].transcript if t.role == "agent"]
    assert said[-1] == "Connecting you to a person." and "This must not be said." not in said


async def test_slow_down_makes_the_rest_of_the_call_patient_and_calmer(tmp_path: Path) -> None:
    audio = await clips()

    def make(s: Settings) -> Agent:
        agent, _ = scripted_agent(s, audio, REPLIES, emotion_triggers={"frustration": "slow_down"})
        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        await run_call(standin, [audio[CALM], audio[ANGRY]])
        await until(lambda: agent.finished, 30, "the call never ended")
    (conversation,) = agent.finished
    assert conversation.listener.config.style.name == "patient"
    assert conversation.tts.name != agent._tts_provider().name  # the calmer voice

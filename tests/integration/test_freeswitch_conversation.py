"""The same agent behind FreeSWITCH (the stand-in, checked against captures of
the real one): greeting, a question answered, an interruption, a handoff to
a human with the transcript; and a caller who hangs up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.freeswitch_standin import FreeSwitchStandin
from tests.textcheck import normalise
from voiceos_switch import Call
from voiceos_switch.demo import demo_agent
from voiceos_switch.providers.stt import WhisperSTT
from voiceos_switch.providers.tts.piper import PiperTTS
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


async def test_conversation_through_freeswitch(tmp_path: Path) -> None:
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    esl_port = await standin.start()
    settings = Settings(
        freeswitch_stream="127.0.0.1:0",
        stream_token=TOKEN,
        esl_port=esl_port,
        esl_password=PASSWORD,
    )
    agent = demo_agent(settings, voice="piper")
    ended: list[Call] = []

    @agent.on("transcript")
    async def wants_a_person(call: Call, turn: object) -> None:
        if "person" in getattr(turn, "text", "").lower():
            await agent.transfer_to_human(call, include_transcript=True)

    @agent.on("call_ended")
    def on_end(call: Call) -> None:
        ended.append(call)

    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    try:
        await asyncio.wait_for(ready.wait(), 180)
        standin.stream_url = agent.stream_server.url()
        question = await PiperTTS().synthesize("What time do you open on Saturday?", 8000)
        person = await PiperTTS().synthesize("Can I talk to a person please?", 8000)
        call = await standin.place_call([(4.0, question)], hold_s=40.0)
        # the answer starts; half a second into it the caller cuts in
        await _wait(
            lambda: len(call.plays) >= 1 and call.current is not None and call.now() > 6.0,
            25,
            "the answer",
        )
        await asyncio.sleep(0.5)
        cut_at = call.now()
        call.say(person)
        await _wait(lambda: call.transferred_to is not None, 20, "the handoff")
        await _wait(lambda: bool(ended), 10, "the end of the call")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await standin.close()

    (conversation,) = agent.conversations.values()
    turns = [(t.role, t.text, t.interrupted) for t in ended[0].transcript]
    # greeting, question, (cut) answer, the request for a person
    assert turns[0][0] == "agent" and "help" in turns[0][1].lower()
    assert normalise(turns[1][1])[-2:] == ["on", "saturday"]
    assert turns[2][0] == "agent" and turns[2][2], turns  # interrupted
    assert conversation.barge_ins == 1 and call.broken >= 1
    assert "person" in turns[3][1].lower()
    # the agent stopped soon after the caller cut in
    stops = [stop for start, stop, _ in call.plays if start < cut_at <= stop + 0.05]
    assert stops and stops[0] - cut_at < 0.8, (cut_at, call.plays)
    # the handoff: to the human extension, with the transcript
    assert call.transferred_to == "operator"
    assert "saturday" in call.variables["voiceos_transcript"].lower()
    handoff = [e for e in standin.events_sent if e.get("Event-Subclass") == "voiceos::handoff"]
    assert handoff and "caller: Can I talk to a person" in handoff[0]["_body"]
    # what the caller heard: the greeting, then an answer, through file playback
    stt = WhisperSTT()
    heard = bytes(call.heard)
    greeting = normalise((await stt.transcribe(heard[: 16000 * 4], 8000)).text)
    assert "help" in greeting, greeting
    metrics = conversation.metrics[0]
    assert metrics.first_frame_sent is not None


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

"""One conversation, the same agent, behind each PBX: the real Asterisk 22
(SIP from the lab carrier, AudioSocket, AMI) and FreeSWITCH (the stand-in,
checked against captures of the real one; mod_audio_stream and ESL).

The caller: waits for the greeting, asks a question and hears the answer,
asks for everything the store sells and cuts the long answer short by
asking for a person; the agent hands the call to a human with the
transcript; the caller hangs up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.freeswitch_standin import FreeSwitchStandin
from tests.textcheck import normalise
from voiceos_switch import Agent, Call
from voiceos_switch.demo import STORE_FACTS, demo_agent
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import place_call, write_wav
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration

RATE = 8000
FIRST = "What time do you open on Saturday?"
LONG = "Tell me about everything you sell."
PERSON = "Can I talk to a person please?"


@dataclass
class Outcome:
    ended: list[Call] = field(default_factory=list)
    handoff_transcript: str = ""
    handoff_target: str = ""


async def caller_timeline() -> tuple[bytes, float]:
    """The caller's whole side as one recording, and its length in seconds."""
    tts = PiperTTS(steady=True)
    first = await tts.synthesize(FIRST, RATE)
    long = await tts.synthesize(LONG, RATE)
    person = await tts.synthesize(PERSON, RATE)
    pcm = bytearray()

    def at(seconds: float, speech: bytes) -> None:
        start = int(seconds * RATE) * 2
        if len(pcm) < start:
            pcm.extend(bytes(start - len(pcm)))
        pcm[start:] = speech

    at(6.0, first)  # well after the greeting (about 2.5 s, once the media is up)
    first_end = 6.0 + len(first) / 2 / RATE
    at(first_end + 9.0, long)  # after the answer
    long_end = first_end + 9.0 + len(long) / 2 / RATE
    at(long_end + 3.2, person)  # while the long answer plays
    return bytes(pcm), len(pcm) / 2 / RATE


#: the long answer the caller cuts short (about eight seconds of speech)
EVERYTHING = (
    "We sell tools, paint, garden supplies and hardware: hammers, saws and drills, "
    "paint for inside and outside, seeds, soil and hoses, and every kind of screw, nail "
    "and bolt you can think of."
)


def conversation_agent(settings: Settings, outcome: Outcome) -> Agent:
    facts = {q: a for q, a in STORE_FACTS.items() if not a.startswith("We sell")}
    facts["What do you sell? Do you have tools? Do you carry paint?"] = EVERYTHING
    agent = demo_agent(settings, voice="piper", facts=facts)

    @agent.on("transcript")
    async def wants_a_person(call: Call, turn: Any) -> None:
        if turn.role == "caller" and "person" in turn.text.lower():
            await agent.transfer_to_human(call, include_transcript=True)

    @agent.on("call_ended")
    def ended(call: Call) -> None:
        outcome.ended.append(call)

    return agent


async def through_asterisk(asterisk: AsteriskSandbox, tmp_path: Path) -> tuple[Agent, Outcome]:
    outcome = Outcome()
    agent = conversation_agent(Settings(), outcome)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 180)
        assert agent.control is not None and await agent.control.wait_ready(10)

        def on_ami(event: dict[str, str]) -> None:
            if event.get("Event") == "UserEvent" and event.get("UserEvent") == "VoiceosHandoff":
                outcome.handoff_transcript = event.get("Transcript", "")
                outcome.handoff_target = event.get("Target", "")

        agent.control.add_listener(on_ami)
        pcm, seconds = await caller_timeline()
        wav = tmp_path / "caller.wav"
        write_wav(wav, pcm, RATE)
        result = await place_call("100", play=wav, delay=0, hold=4.0, timeout=120)
        assert result.answered
        for _ in range(100):
            if outcome.ended:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return agent, outcome


async def through_freeswitch(tmp_path: Path) -> tuple[Agent, Outcome]:
    outcome = Outcome()
    standin = FreeSwitchStandin("pbx-conversation-password", "", tmp_path)
    port = await standin.start()
    settings = Settings(
        audiosocket="127.0.0.1:0",
        freeswitch_stream="127.0.0.1:0",
        stream_token="pbx-conversation-token-0123456789",
        esl_port=port,
        esl_password="pbx-conversation-password",
    )
    agent = conversation_agent(settings, outcome)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    try:
        await asyncio.wait_for(ready.wait(), 180)
        standin.stream_url = agent.stream_server.url()
        pcm, seconds = await caller_timeline()
        call = await standin.place_call([(0.0, pcm)], hold_s=seconds + 4.0)
        await asyncio.wait_for(call.done.wait(), seconds + 30)
        for _ in range(100):
            if outcome.ended:
                break
            await asyncio.sleep(0.05)
        handoff = [e for e in standin.events_sent if e.get("Event-Subclass") == "voiceos::handoff"]
        if handoff:
            outcome.handoff_transcript = handoff[0]["_body"]
            outcome.handoff_target = handoff[0].get("Voiceos-Target", "")
        assert call.transferred_to == outcome.handoff_target
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await standin.close()
    return agent, outcome


@pytest.mark.parametrize("pbx", ["asterisk", "freeswitch"])
async def test_the_same_conversation_on_each_pbx(
    pbx: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if pbx == "asterisk":
        asterisk = request.getfixturevalue("asterisk")
        agent, outcome = await through_asterisk(asterisk, tmp_path)
    else:
        agent, outcome = await through_freeswitch(tmp_path)

    assert outcome.ended, "the call never ended"
    call = outcome.ended[0]
    assert call.pbx == pbx
    said = [(t.role, t.text, t.interrupted) for t in call.transcript]
    roles = [r for r, _, _ in said]
    # greeting, first question, its answer, the long question, the cut answer, the request
    assert roles == ["agent", "caller", "agent", "caller", "agent", "caller"], said
    assert "acme" in said[0][1].lower() and not said[0][2], said[0]  # the whole greeting
    assert normalise(said[1][1])[-2:] == ["on", "saturday"], said[1]
    assert said[2][1] and not said[2][2], (
        said[2],
        call.transcript[2].planned_text,
    )  # answered in full
    assert said[4][2], said[4]  # the long answer was cut short...
    assert len(said[4][1]) < len(
        call.transcript[4].planned_text or "x" * 10_000
    )  # ...to what was heard
    assert "person" in said[5][1].lower()
    (conversation,) = agent.finished
    assert conversation.barge_ins == 1
    assert conversation.metrics[0].first_frame_sent is not None
    # handed to a human with the transcript
    assert call.transferred_to == "operator" and outcome.handoff_target == "operator"
    assert "saturday" in outcome.handoff_transcript.lower(), outcome.handoff_transcript

"""One conversation, the same agent, behind each PBX: the real Asterisk 22
(SIP from the lab carrier, AudioSocket, AMI) and FreeSWITCH (the stand-in,
checked against captures of the real one; mod_audio_stream and ESL).

The caller: waits for the greeting, asks a question and hears the answer,
asks for everything the store sells and cuts the long answer short by
asking for a person, each when it has heard the agent (never at fixed
times); the agent, with no code of the user's for it, says so and hands
the call to a human with the transcript; the caller hangs up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.freeswitch_standin import FreeSwitchStandin, StandinCall, hears
from tests.integration.serving import serving
from tests.textcheck import normalise
from voiceos_switch import Agent, Call
from voiceos_switch.demo import STORE_FACTS, demo_agent
from voiceos_switch.pbx.asterisk import LAB_DIR, AsteriskSandbox
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
    #: where the PBX itself moved the call (the stand-in knows)
    pbx_moved_to: str | None = None


async def caller_lines() -> tuple[bytes, bytes, bytes]:
    tts = PiperTTS(steady=True)
    return tuple([await tts.synthesize(text, RATE) for text in (FIRST, LONG, PERSON)])  # type: ignore[return-value]


#: the caller speaks when the agent has spoken and gone quiet, not at fixed
#: times, so a slow turn on a busy machine changes nothing but the wait
HEARD_MS = 300  # the agent has started speaking: this much continuous sound
QUIET_MS = 1500  # the agent has finished: this much silence
CUT_AFTER_S = 1.2  # the caller cuts the long answer this far into it
WAIT_S = 60.0  # the longest a caller waits for the agent, before giving up


def asterisk_script(dir_inside: str) -> str:
    """The caller's side for the lab caller's dialplan (``heard`` and ``quiet``
    are Asterisk's WaitForNoise and WaitForSilence on what the caller hears)."""
    return "|".join(
        [
            f"heard:{HEARD_MS}",  # the greeting
            f"quiet:{QUIET_MS}",
            f"play:{dir_inside}/first",
            f"heard:{HEARD_MS}",  # its answer
            f"quiet:{QUIET_MS}",
            f"play:{dir_inside}/long",
            f"heard:{HEARD_MS}",  # the long answer starts...
            f"wait:{CUT_AFTER_S:g}",
            f"play:{dir_inside}/person",  # ...and is cut short
            "wait:4",
            "hangup",
        ]
    )


async def standin_caller(call: StandinCall, first: bytes, long: bytes, person: bytes) -> None:
    for line in (first, long):
        await hears(call, "heard", HEARD_MS, WAIT_S)
        await hears(call, "quiet", QUIET_MS, WAIT_S)
        call.say(line)
        await asyncio.sleep(len(line) / 2 / RATE)
    await hears(call, "heard", HEARD_MS, WAIT_S)
    await asyncio.sleep(CUT_AFTER_S)
    call.say(person)


#: the long answer the caller cuts short (about eight seconds of speech)
EVERYTHING = (
    "We sell tools, paint, garden supplies and hardware: hammers, saws and drills, "
    "paint for inside and outside, seeds, soil and hoses, and every kind of screw, nail "
    "and bolt you can think of."
)


def conversation_agent(settings: Settings, outcome: Outcome) -> Agent:
    facts = {q: a for q, a in STORE_FACTS.items() if not a.startswith("We sell")}
    facts["What do you sell? Do you have tools? Do you carry paint?"] = EVERYTHING
    # asking for a person needs no code: the agent hands the call over itself
    agent = demo_agent(settings, voice="piper", facts=facts)

    @agent.on("call_ended")
    def ended(call: Call) -> None:
        outcome.ended.append(call)

    return agent


async def through_asterisk(asterisk: AsteriskSandbox, tmp_path: Path) -> tuple[Agent, Outcome]:
    outcome = Outcome()
    agent = conversation_agent(Settings(), outcome)

    def handed_over(event: dict[str, str]) -> None:
        outcome.handoff_transcript = event.get("Transcript", "")
        outcome.handoff_target = event.get("Target", "")

    async with serving(agent, handed_over):
        lab = asterisk.lab_dir / f"conversation-{tmp_path.name}"
        lab.mkdir(parents=True, exist_ok=True)
        lab.chmod(0o755)
        for name, pcm in zip(("first", "long", "person"), await caller_lines(), strict=True):
            write_wav(lab / f"{name}.wav", pcm, RATE)
            (lab / f"{name}.wav").chmod(0o644)
        script = asterisk_script(f"{LAB_DIR}/{lab.name}")
        result = await place_call("100", script=script, timeout=240)
        assert result.answered
        for _ in range(100):
            if outcome.ended:
                break
            await asyncio.sleep(0.05)
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
        lines = await caller_lines()
        call = await standin.place_call([], hold_s=4 * WAIT_S)
        caller = asyncio.create_task(standin_caller(call, *lines))
        await asyncio.wait_for(call.done.wait(), 4 * WAIT_S)
        if caller.done():
            caller.result()  # the caller's own complaint, if it gave up
        caller.cancel()
        for _ in range(100):
            if outcome.ended:
                break
            await asyncio.sleep(0.05)
        handoff = [e for e in standin.events_sent if e.get("Event-Subclass") == "voiceos::handoff"]
        if handoff:
            outcome.handoff_transcript = handoff[0]["_body"]
            outcome.handoff_target = handoff[0].get("Voiceos-Target", "")
        outcome.pbx_moved_to = call.transferred_to
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
    # greeting, first question, its answer, the long question, the cut answer,
    # the request, and the agent's word before the hand-off
    assert roles == ["agent", "caller", "agent", "caller", "agent", "caller", "agent"], said
    assert said[6][1] == "Connecting you to a person." and not said[6][2], said[6]
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
    if pbx == "freeswitch":
        assert outcome.pbx_moved_to == "operator"
    assert "saturday" in outcome.handoff_transcript.lower(), outcome.handoff_transcript

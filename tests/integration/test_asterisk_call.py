"""Real SIP calls through the real Asterisk 22 into the bridge and back.

The lab carrier (a second PJSIP endpoint on its own loopback transport)
sends a real INVITE and RTP (G.711 u-law) to the ``carrier`` trunk; the
dialplan runs ``voiceos_agent``; the caller side records what it hears.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.audiocheck import active_seconds, envelope_find, find, tone_seconds
from voiceos_switch import Call
from voiceos_switch.audio.pcm import resample
from voiceos_switch.control.ami import AMIController
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import place_call, read_wav_mono16, write_wav
from voiceos_switch.providers.tts.espeak import EspeakTTS

from .conftest import Bridge

pytestmark = pytest.mark.integration

CALLER_SAYS = "I would like to check the status of my order number four two seven."


async def speech(text: str, rate: int) -> bytes:
    return await EspeakTTS().synthesize(text, rate)


def middle(pcm: bytes, rate: int, trim_s: float = 0.2) -> bytes:
    """The utterance less its edges (the first packets may precede the bridge)."""
    cut = int(trim_s * rate) * 2
    return pcm[cut:-cut]


@pytest.fixture
async def caller_wav(tmp_path: Path) -> Path:
    path = tmp_path / "caller.wav"
    write_wav(path, await speech(CALLER_SAYS, 8000), 8000)
    return path


def test_configuration_loads_without_errors(asterisk: AsteriskSandbox) -> None:
    errors = asterisk.log_errors(since=asterisk.boot_log_offset)  # type: ignore[attr-defined]
    assert errors == []
    assert "AudioSocket" in asterisk.cli("dialplan show s@voiceos-agent")
    assert "carrier" in asterisk.cli("pjsip show endpoint carrier")
    users = asterisk.cli("manager show users")
    assert "voiceos" in users
    settings = asterisk.cli("manager show settings")
    assert "127.0.0.1" in settings


async def test_caller_and_agent_hear_each_other_and_dtmf_arrives(
    bridge: Bridge, caller_wav: Path
) -> None:
    # the caller talks over the greeting, then presses 5 once it has finished
    result = await place_call("100", play=caller_wav, dtmf="5", delay=0.5, dtmf_delay=2.0, hold=3.0)
    assert result.answered and result.heard is not None
    (call,) = await bridge.wait_calls(1)

    # the bridge's side: 8 kHz application path, caller id from the trunk
    assert call.sample_rate == 8000
    assert (call.caller, call.called) == ("15550100", "100")
    assert call.dtmf == ["5"]

    # what the caller said reached the bridge intact (through G.711)
    sent_pcm, _ = read_wav_mono16(caller_wav)
    got_pcm, rate = read_wav_mono16(bridge.recording(call, "caller"))
    assert rate == 8000
    _, score = find(got_pcm, middle(sent_pcm, 8000))
    assert score > 0.9, f"caller speech at the bridge correlates only {score:.2f}"

    # the caller heard the greeting, whole, and the answer to the key press after it
    heard, heard_rate = read_wav_mono16(result.heard)
    assert heard_rate == 8000
    greeting = await speech(bridge.settings.greeting, 8000)
    pressed = await speech("You pressed 5.", 8000)
    at_greeting, s_greeting = envelope_find(heard, greeting, 8000)
    at_pressed, s_pressed = envelope_find(heard, pressed, 8000)
    assert s_greeting > 0.85, f"greeting not heard (score {s_greeting:.2f})"
    assert s_pressed > 0.85, f"DTMF answer not heard (score {s_pressed:.2f})"
    assert at_pressed >= at_greeting + len(greeting) / 2 / 8000 - 0.1
    # nothing was lost or stretched on the way: what the caller heard is what
    # the bridge sent, sample for sample through G.711, for as long
    sent_agent, _ = read_wav_mono16(bridge.recording(call, "agent"))
    _, fidelity = find(heard, sent_agent[: len(greeting)])
    assert fidelity > 0.9, f"agent audio altered on the way ({fidelity:.2f})"
    assert active_seconds(heard, 8000) >= 0.9 * (
        active_seconds(greeting, 8000) + active_seconds(pressed, 8000)
    )
    turns = [t.text for t in call.transcript if t.role == "agent"]
    assert turns[-1] == "You pressed 5."


async def test_wideband_channel_driver_path(bridge: Bridge, caller_wav: Path) -> None:
    result = await place_call("1600", play=caller_wav, delay=0.5, hold=1.0)
    assert result.answered
    (call,) = await bridge.wait_calls(1)
    assert call.sample_rate == 16000
    got, rate = read_wav_mono16(bridge.recording(call, "caller"))
    assert rate == 16000
    sent, _ = read_wav_mono16(caller_wav)
    _, score = find(got, middle(resample(sent, 8000, 16000), 16000))
    assert score > 0.8, f"caller speech at the bridge correlates only {score:.2f}"
    heard, _ = read_wav_mono16(result.heard)  # type: ignore[arg-type]
    _, s_greeting = envelope_find(heard, await speech(bridge.settings.greeting, 8000), 8000)
    assert s_greeting > 0.85


async def test_transfer_to_a_human_over_ami_with_the_transcript(
    bridge: Bridge, asterisk: AsteriskSandbox
) -> None:
    watcher = AMIController(secret=asterisk.ami_secret())
    handoffs: list[dict[str, str]] = []
    watcher.add_listener(
        lambda e: handoffs.append(e) if e.get("UserEvent") == "VoiceosHandoff" else None
    )
    watcher.start()
    assert await watcher.wait_ready(10)
    try:
        result = await place_call("100", dtmf="0", delay=2.5, hold=6.0)
    finally:
        await watcher.close()
    (call,) = await bridge.wait_calls(1)
    assert call.transferred_to == "operator"
    # a silent caller sends no frames, yet the greeting starts at once: the
    # media rate came over AMI with the call id
    sent_agent, rate = read_wav_mono16(bridge.recording(call, "agent"))
    first_sound = next(i for i, b in enumerate(sent_agent[::2]) if b) / rate
    assert first_sound < 0.3
    # the bridge's media ended because Asterisk moved the channel away
    assert call.media.end_reason.reason == "remote hung up"  # type: ignore[attr-defined]
    assert len(handoffs) == 1
    assert handoffs[0]["CallID"] == call.id and handoffs[0]["Target"] == "operator"
    assert "Connecting you to a person." in handoffs[0]["Transcript"]
    assert "agent: Hello" in handoffs[0]["Transcript"]
    # and the caller is now hearing the human side (its 440 Hz tone), not the agent
    heard, rate = read_wav_mono16(result.heard)  # type: ignore[arg-type]
    assert tone_seconds(heard, rate, 440.0) > 1.0


async def test_agent_hangup_ends_the_callers_call(bridge: Bridge) -> None:
    result = await place_call("100", dtmf="#", delay=2.0, hold=15.0)
    (call,) = await bridge.wait_calls(1)
    assert call.media.end_reason.reason == "agent hung up"  # type: ignore[attr-defined]
    assert result.hangup_cause == "Normal Clearing"
    assert result.duration_s < 10.0  # the caller would have stayed 17 s
    heard, rate = read_wav_mono16(result.heard)  # type: ignore[arg-type]
    _, score = envelope_find(heard, await speech("Goodbye.", rate), rate)
    assert score > 0.85


async def test_caller_hangup_ends_the_bridge_call_promptly(
    bridge: Bridge, asterisk: AsteriskSandbox
) -> None:
    loop = asyncio.get_running_loop()
    result = await place_call("100", delay=1.5, hold=0)
    hung_up_at = loop.time()
    (call,) = await bridge.wait_calls(1)
    assert loop.time() - hung_up_at < 1.0
    assert call.media.end_reason.reason == "remote hung up"  # type: ignore[attr-defined]
    assert result.answered
    await asyncio.sleep(0.5)
    assert "0 active channels" in asterisk.cli("core show channels count")


async def test_handoff_through_the_dialplan_and_recording_on_the_pbx(
    bridge: Bridge, asterisk: AsteriskSandbox
) -> None:
    """The Gosub's own handoff path (VOICEOS_HANDOFF, media ended by the
    bridge) and MixMonitor started and stopped over AMI."""
    agent = bridge.agent
    recorded: list[str] = []

    @agent.on("call_started")
    async def start(call: Call) -> None:
        recorded.append(await agent.start_recording(call))
        await call.say("Please hold while I find someone.")
        await agent.stop_recording(call)
        await agent.transfer_to_human(call, via="dialplan")

    result = await place_call("100", delay=0, hold=7.0)
    (call,) = await bridge.wait_calls(1)
    assert call.media.end_reason.reason == "agent hung up"  # type: ignore[attr-defined]
    assert call.transferred_to == "operator"
    heard, rate = read_wav_mono16(result.heard)  # type: ignore[arg-type]
    _, said = envelope_find(heard, await speech("Please hold while I find someone.", rate), rate)
    assert said > 0.85
    assert tone_seconds(heard, rate, 440.0) > 1.0  # then the human side
    # the PBX's recording holds the agent's words, and stopped when asked
    (path,) = recorded
    await asyncio.sleep(0.5)
    pbx_pcm, pbx_rate = read_wav_mono16(asterisk.host_path(path))
    _, in_recording = envelope_find(
        pbx_pcm, await speech("Please hold while I find someone.", pbx_rate), pbx_rate
    )
    assert in_recording > 0.85
    assert len(pbx_pcm) / 2 / pbx_rate < 6.0  # not the whole call


async def test_hangup_at_the_pbx_over_ami(bridge: Bridge) -> None:
    agent = bridge.agent

    @agent.on("call_started")
    async def start(call: Call) -> None:
        await call.say("Goodbye.")
        await agent.hangup(call)

    result = await place_call("100", delay=0, hold=10.0)
    (call,) = await bridge.wait_calls(1)
    assert result.duration_s < 6.0
    assert result.hangup_cause == "Normal Clearing"
    assert call.media.end_reason.reason == "remote hung up"  # type: ignore[attr-defined]

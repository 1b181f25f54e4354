"""A whole call on the embedded defaults, over a real AudioSocket connection.

A scripted caller plays Asterisk's part on loopback: it connects to the
bridge, sends its speech (synthesised on the fly with piper, through a
telephone channel) as 20 ms frames in real time, listens to the agent, asks
questions, needs a tool, interrupts the agent once, and hangs up. Used by
``voiceos-switch demo`` and by ``bench/latency.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .agent import Agent
from .protocols import audiosocket as proto
from .settings import Settings
from .tools import tool

RATE = 8000
FRAME_BYTES = RATE // 50 * 2
SILENCE = bytes(FRAME_BYTES)

STORE_PROMPT = "You are a friendly phone agent for Acme Hardware, a hardware store."

#: what the agent knows, as data: the questions each fact answers, and the
#: answer, which it says as written (it does not paraphrase it)
STORE_FACTS = {
    "When are you open? What are your hours? When do you close?": (
        "We are open from nine in the morning to six in the evening, Monday to Saturday, "
        "and we are closed on Sundays."
    ),
    "What do you sell? Do you have tools? Do you carry paint?": (
        "We sell tools, paint, garden supplies and hardware."
    ),
    "Can I return something? What is your return policy?": (
        "You can return anything within thirty days with your receipt."
    ),
    "Do you deliver? How much is delivery?": "Delivery is free on orders over fifty dollars.",
    "Where are you? What is your address? How do I find the store?": (
        "The store is at twelve Main Street, next to the post office."
    ),
    "Where can I park? Is there parking?": "Parking is free behind the store.",
    "Do you cut keys? How much is a key?": "We cut keys while you wait, for three dollars a key.",
}


@tool(read_only=True)
def lookup_order(order_number: str) -> dict[str, str]:
    """Look up the delivery status of a customer's order by its number."""
    digits = "".join(ch for ch in order_number if ch.isdigit())
    if digits == "427":
        return {
            "order": "427",
            "status": "shipped",
            "arrives": "Friday",
            "say": "Order four two seven has shipped. It arrives on Friday.",
        }
    return {
        "order": digits or order_number,
        "status": "not found",
        "say": f"I can't find an order numbered {digits or order_number}.",
    }


def demo_agent(
    settings: Settings | None = None,
    voice: str = "espeak",
    facts: dict[str, str] | list[str] | None = None,
    **options: Any,
) -> Agent:
    """The demo shop's agent; ``options`` go to :class:`Agent` as they are
    (``emotion_triggers=...``, ``style=...``)."""
    return Agent(
        model="local",
        voice=voice,
        system_prompt=STORE_PROMPT,
        facts=STORE_FACTS if facts is None else facts,
        tools=[lookup_order],
        greeting="Hello, Acme Hardware. How can I help?",
        settings=settings or Settings(),
        **options,
    )


@dataclass
class Step:
    say: str
    #: speak while the agent is still talking, this many seconds into its reply
    interrupt_after_s: float | None = None
    #: a backchannel ("uh-huh"): the agent should carry on, not stop
    backchannel: bool = False


DEFAULT_SCRIPT = [
    Step("What time do you open on Saturday?"),
    Step("Can you check on my order number four two seven?"),
    Step("Do you sell garden supplies?", interrupt_after_s=None),
    Step("Sorry, one more thing. Do you sell paint?", interrupt_after_s=0.8),
]


@dataclass
class WireTurn:
    said: str
    speech_end: float
    #: when the caller started saying it
    started: float = 0.0
    first_agent_audio: float | None = None
    interrupted_agent: bool = False
    #: for speech over the agent: when the caller's voice started, and when
    #: the agent's last audible frame before going quiet arrived
    onset: float | None = None
    agent_last_frame: float | None = None
    backchannel: bool = False

    @property
    def barge_in_ms(self) -> float | None:
        if self.onset is None or self.agent_last_frame is None:
            return None
        return round((self.agent_last_frame - self.onset) * 1000, 1)

    @property
    def response_ms(self) -> float | None:
        if self.first_agent_audio is None:
            return None
        return round((self.first_agent_audio - self.speech_end) * 1000, 1)


@dataclass
class CallerResult:
    turns: list[WireTurn] = field(default_factory=list)
    caller: bytearray = field(default_factory=bytearray)
    agent: bytearray = field(default_factory=bytearray)
    #: when each agent frame arrived (one per 20 ms frame in ``agent``)
    agent_times: list[float] = field(default_factory=list)

    def agent_audio(self, start: float, end: float) -> bytes:
        """The agent's audio that arrived between two moments."""
        frame = FRAME_BYTES
        return b"".join(
            bytes(self.agent[i * frame : (i + 1) * frame])
            for i, at in enumerate(self.agent_times)
            if start <= at < end
        )


class ScriptedCaller(asyncio.Protocol):
    """Plays Asterisk: paced caller frames out, agent frames in, timestamped."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = proto.Parser()
        self.outbox: list[bytes] = []
        self.result = CallerResult()
        self.last_agent_sound: float = 0.0
        self.agent_sound_started: float | None = None
        self.closed = asyncio.Event()
        self.on_agent_frame: Any = None
        self.loud_times: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(proto.encode(proto.CallId(uuid.uuid4())))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        for frame in self.parser.feed(data):
            if isinstance(frame, proto.Audio):
                self.result.agent += frame.pcm
                self.result.agent_times.append(now)
                loud = np.abs(np.frombuffer(frame.pcm, dtype="<i2")).max(initial=0) > 300
                if loud:
                    if self.agent_sound_started is None or now - self.last_agent_sound > 0.5:
                        self.agent_sound_started = now
                    self.last_agent_sound = now
                    self.loud_times.append(now)
                    if self.on_agent_frame is not None:
                        self.on_agent_frame(now)
            elif isinstance(frame, proto.Hangup):
                self.closed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def agent_quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.last_agent_sound >= seconds


async def _caller_speech(text: str) -> bytes:
    from .providers.tts.piper import PiperTTS

    return await PiperTTS(steady=True).synthesize(text, RATE)  # the same caller every run


async def run_caller(
    port: int,
    script: list[Step],
    host: str = "127.0.0.1",
    quiet_s: float = 1.2,
    max_wait_s: float = 20.0,
) -> CallerResult:
    loop = asyncio.get_running_loop()
    speech = {step.say: await _caller_speech(step.say) for step in script}
    _, caller = await loop.create_connection(ScriptedCaller, host, port)
    result = caller.result
    pending: list[bytes] = []
    turn: WireTurn | None = None

    def agent_frame(now: float) -> None:
        if turn is not None and turn.first_agent_audio is None and now > turn.speech_end:
            turn.first_agent_audio = now

    caller.on_agent_frame = agent_frame

    voiced_at: list[float] = []
    #: the clip's last voiced frame, and the turn whose speech it ends
    mark: list[tuple[bytes, WireTurn]] = []

    async def send_loop() -> None:
        start = time.monotonic()
        n = 0
        while not caller.closed.is_set():
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            frame = pending.pop(0) if pending else SILENCE
            if frame is not SILENCE and not voiced_at:
                if np.abs(np.frombuffer(frame, dtype="<i2")).max(initial=0) > 1000:
                    voiced_at.append(time.monotonic())
            if mark and frame is mark[0][0]:
                # the end of the caller's speech: its last voiced frame, not
                # the synthesiser's trailing silence after it
                mark.pop()[1].speech_end = time.monotonic() + 0.02
            result.caller += frame
            if caller.transport is not None and not caller.transport.is_closing():
                caller.transport.write(proto.encode_audio(frame, RATE))

    sender = asyncio.create_task(send_loop())

    async def wait_until(predicate: Any, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not predicate() and time.monotonic() < deadline and not caller.closed.is_set():
            await asyncio.sleep(0.02)

    async def say(step: Step, over_agent: bool) -> None:
        nonlocal turn
        pcm = speech[step.say]
        frames = [
            pcm[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\0")
            for i in range(0, len(pcm), FRAME_BYTES)
        ]
        voiced_at.clear()
        new = WireTurn(
            said=step.say,
            speech_end=float("inf"),
            started=time.monotonic(),
            backchannel=step.backchannel,
        )
        mark[:] = [(frames[_last_voiced_frame(frames)], new)]
        if not step.backchannel:
            turn = new  # its first answer is the first agent frame after its speech ends
        pending.extend(frames)
        await wait_until(lambda: not pending, 60)
        if over_agent and voiced_at:
            new.onset = voiced_at[0]
            new.agent_last_frame = _last_before_gap(caller.loud_times, new.onset)
        result.turns.append(new)

    # the greeting first
    await wait_until(lambda: caller.agent_sound_started is not None, max_wait_s)
    await wait_until(lambda: caller.agent_quiet_for(quiet_s), max_wait_s)

    def answered(t: WireTurn | None) -> Any:
        return lambda: t is not None and t.first_agent_audio is not None

    for i, step in enumerate(script):
        await say(step, over_agent=step.interrupt_after_s is not None)
        if step.backchannel:
            await wait_until(lambda: caller.agent_quiet_for(quiet_s), max_wait_s)
            continue
        following = script[i + 1] if i + 1 < len(script) else None
        await wait_until(answered(turn), max_wait_s)
        if following is not None and following.interrupt_after_s is not None:
            # talk over the agent's answer this far into it
            turn.interrupted_agent = True  # type: ignore[union-attr]
            await asyncio.sleep(following.interrupt_after_s)
            continue
        await wait_until(lambda: caller.agent_quiet_for(quiet_s), max_wait_s)
    await wait_until(answered(turn), max_wait_s)
    await wait_until(lambda: caller.agent_quiet_for(quiet_s), max_wait_s)
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    if caller.transport is not None:
        caller.transport.close()
    return result


def _last_voiced_frame(frames: list[bytes], threshold: int = 500) -> int:
    """Index of the last frame with voice in it (peak over ``threshold``)."""
    for i in range(len(frames) - 1, -1, -1):
        if np.abs(np.frombuffer(frames[i], dtype="<i2")).max(initial=0) > threshold:
            return i
    return len(frames) - 1


def _last_before_gap(times: list[float], onset: float, gap: float = 0.3) -> float | None:
    """The agent's last loud frame at or after ``onset`` before it went quiet;
    None when the agent was already quiet then (there was nothing to interrupt)."""
    last = onset
    for t in times:
        if t < onset:
            continue
        if t - last > gap:
            break
        last = t
    return last if last > onset else None


def write_stereo(path: Path, caller: bytes, agent: bytes, rate: int = RATE) -> None:
    a = np.frombuffer(caller, dtype="<i2")
    b = np.frombuffer(agent, dtype="<i2")
    n = max(len(a), len(b))
    stereo = np.zeros((n, 2), dtype="<i2")
    stereo[: len(a), 0] = a
    stereo[: len(b), 1] = b
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(stereo.tobytes())


async def call_demo_agent(script: list[Step], voice: str = "espeak") -> tuple[CallerResult, Any]:
    """Serve the demo agent on a free loopback port and run ``script`` as its
    caller; returns what the caller recorded and the agent's Conversation."""
    agent = demo_agent(Settings(audiosocket="127.0.0.1:0"), voice=voice)
    ready, stop = asyncio.Event(), asyncio.Event()
    server_task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    await asyncio.wait_for(ready.wait(), 180)
    port = agent.server.address[1]
    try:
        result = await run_caller(port, script)
        for _ in range(100):
            if not agent.calls:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await server_task
    (conversation,) = agent.finished
    return result, conversation


async def run_demo(wav: Path | None, voice: str = "espeak") -> dict[str, Any]:
    result, conversation = await call_demo_agent(DEFAULT_SCRIPT, voice)
    call_id = conversation.call.id
    call = conversation.call
    if wav is not None:
        write_stereo(wav, bytes(result.caller), bytes(result.agent))
    return {
        "call_id": call_id,
        "transcript": [
            {"role": t.role, "text": t.text, "interrupted": t.interrupted} for t in call.transcript
        ],
        "turns": [
            {
                "caller": m.caller_text,
                "tools": m.tool_calls,
                "interrupted": m.interrupted,
                **{f"{k}_ms": v for k, v in m.as_ms().items()},
            }
            for m in conversation.metrics
        ],
        "wire": [
            {"said": t.said, "response_ms": t.response_ms, "barge_in_ms": t.barge_in_ms}
            for t in result.turns
            if not t.backchannel
        ],
        "barge_ins": conversation.barge_ins,
        "false_barge_ins": conversation.false_barge_ins,
    }


def print_report(report: dict[str, Any]) -> None:
    print("transcript:")
    for t in report["transcript"]:
        mark = "  [interrupted]" if t["interrupted"] else ""
        print(f"  {t['role']:>6}: {t['text']}{mark}")
    print()
    cols = ["endpoint", "stt_final", "llm_first_token", "tts_first_audio", "first_frame_sent"]
    print(f"{'turn':>4} {'on the wire':>11} " + " ".join(f"{c:>16}" for c in cols) + "  tools")
    for i, turn in enumerate(report["turns"]):
        wire = report["wire"][i]["response_ms"] if i < len(report["wire"]) else None
        cells = " ".join(f"{_fmt(turn[c + '_ms']):>16}" for c in cols)
        print(f"{i + 1:>4} {_fmt(wire):>11} {cells}  {','.join(turn['tools']) or '-'}")
    print("(ms after the end of the caller's speech; 'on the wire' as the caller measured it)")
    print(f"barge-ins: {report['barge_ins']}, ignored: {report['false_barge_ins']}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main(wav: Path | None, as_json: bool, voice: str) -> int:
    report = asyncio.run(run_demo(wav, voice=voice))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
        if wav is not None:
            print(f"stereo recording (caller left, agent right): {wav}")
    return 0


def _serve_target() -> Agent:
    """``voiceos-switch serve --agent voiceos_switch.demo:agent``."""
    return demo_agent()


agent = _serve_target()

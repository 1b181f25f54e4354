"""The turn loop's timing on the virtual clock: endpointing, speculation,
barge-in and backchannels, asserted in milliseconds of stream time.

The caller's "voice" is a tone whose level names the words it carries, the
recogniser reads the words back from the levels after a fixed (virtual)
delay, and the end-of-turn model answers what the test tells it to. The
same Conversation, Listener and SpeechHandle run as in a call; only time,
the models and the media are stand-ins, so every run is the same run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from tests.fakes import FakeMedia
from voiceos_switch.audio.clock import VirtualClock
from voiceos_switch.audio.pacer import FrameClock
from voiceos_switch.call import Call
from voiceos_switch.conversation.engine import Conversation, ConversationConfig, TurnState
from voiceos_switch.conversation.knowledge import Fact, Knowledge
from voiceos_switch.events import Event
from voiceos_switch.handlers import sdk_arguments
from voiceos_switch.media import AudioIn, DtmfIn
from voiceos_switch.providers.llm import TextDelta, ToolCallRequest
from voiceos_switch.providers.stt import Transcript
from voiceos_switch.providers.vad import VADResult
from voiceos_switch.tools import Tool, tool

RATE = 8000
FRAME = 320  # bytes in 20 ms
SILENT = bytes(FRAME)


def voice(level: int, ms: int) -> list[bytes]:
    """A voiced sound at peak ``level``, in 20 ms frames."""
    t = np.arange(RATE * ms // 1000) / RATE
    wave = 0.6 * np.sin(2 * np.pi * 200 * t) + 0.4 * np.sin(2 * np.pi * 400 * t)
    wave /= np.abs(wave).max()
    pcm = np.round(wave * level).astype("<i2").tobytes()
    return [pcm[i : i + FRAME] for i in range(0, len(pcm), FRAME)]


def silence(ms: int) -> list[bytes]:
    return [SILENT] * (ms // 20)


def peak(frame: bytes) -> int:
    return int(np.abs(np.frombuffer(frame, dtype="<i2")).max(initial=0))


class Words:
    """Which words each voice level stands for."""

    def __init__(self) -> None:
        self.by_level: dict[int, str] = {}
        self.next = 4000

    def say(self, text: str, ms: int | None = None) -> list[bytes]:
        level = self.next
        self.next += 700
        self.by_level[level] = text
        return voice(level, ms if ms is not None else 120 * len(text.split()) + 200)

    def read(self, pcm: bytes) -> list[str]:
        frames = [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]
        seen: list[str] = []
        for f in frames:
            p = peak(f)
            for level, text in self.by_level.items():
                if abs(p - level) < 200 and (not seen or seen[-1] != text):
                    seen.append(text)
        return seen


class VirtualSTT:
    name = "virtual"

    def __init__(self, clock: VirtualClock, words: Words, delay: float = 0.1) -> None:
        self.clock, self.words, self.delay = clock, words, delay
        self.calls = 0
        self.cancelled = 0
        self.fail = False

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript:
        self.calls += 1
        try:
            await self.clock.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise RuntimeError("recogniser down")
        return Transcript(" ".join(self.words.read(pcm)), audio_s=len(pcm) / 2 / sample_rate)


class VirtualVAD:
    """Speech when the frame is loud (the neural VAD's part)."""

    threshold = 0.5

    def __init__(self) -> None:
        self.ms = 0

    async def feed_async(self, pcm: bytes) -> list[VADResult]:
        self.ms += 20
        return [VADResult(1.0 if peak(pcm) > 1000 else 0.0, self.ms, peak(pcm) > 1000)]


class LoudGate:
    def is_speech(self, frame: bytes, sample_rate: int) -> bool:
        return peak(frame) > 1000


class VirtualTurn:
    """The end-of-turn model: answers ``p(text)`` after ``delay``."""

    def __init__(
        self, clock: VirtualClock, words: Words, p: Callable[[str], float], delay: float = 0.03
    ) -> None:
        self.clock, self.words, self.p, self.delay = clock, words, p, delay

    async def probability(self, pcm: bytes, sample_rate: int) -> float:
        await self.clock.sleep(self.delay)
        return self.p(" ".join(self.words.read(pcm)))


class VirtualWords:
    """The words' end-of-turn model: 0.3 for words that read finished, next
    to nothing for ones ending where a sentence cannot (as the language
    model says)."""

    def __init__(
        self, clock: VirtualClock, known: dict[str, float] | None = None, delay: float = 0.03
    ) -> None:
        self.clock, self.known, self.delay = clock, known or {}, delay

    async def probability(self, text: str) -> float:
        from voiceos_switch.conversation.endpoint import looks_unfinished

        await self.clock.sleep(self.delay)
        if text in self.known:
            return self.known[text]
        return 0.0001 if looks_unfinished(text) else 0.3


class VirtualLLM:
    """Replies by the caller's words; first token after ``delay``."""

    name = "virtual"

    def __init__(self, clock: VirtualClock, replies: dict[str, Any], delay: float = 0.05) -> None:
        self.clock, self.replies, self.delay = clock, replies, delay
        self.seen: list[list[dict[str, Any]]] = []

    async def stream(self, messages: list[dict[str, Any]], tools: list[Tool]) -> AsyncIterator[Any]:
        self.seen.append(messages)
        last = str(messages[-1].get("content"))
        if messages[-1]["role"] == "tool":
            reply: Any = self.replies.get("after tool", "Done.")
        else:
            reply = self.replies.get(last, "Okay.")
        await self.clock.sleep(self.delay)
        if isinstance(reply, ToolCallRequest):
            yield reply
            return
        for word in str(reply).split(" "):
            yield TextDelta(word + " ")


class VirtualTTS:
    """100 ms of audio per word, at once."""

    name = "virtual"

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        for _ in text.split():
            yield (np.full(sample_rate // 10, 3000, dtype="<i2")).tobytes()


class Line:
    """A call on the virtual clock: the test is the caller."""

    def __init__(
        self,
        replies: dict[str, Any],
        p: Callable[[str], float] = lambda text: 0.9,
        words_p: dict[str, float] | None = None,
        tools: list[Tool] | None = None,
        knowledge: Knowledge | None = None,
        stt_delay: float = 0.1,
        **cfg: Any,
    ) -> None:
        self.clock = VirtualClock()
        self.frames = FrameClock(self.clock)
        self.media = FakeMedia(self.frames)
        self.words = Words()
        self.stt = VirtualSTT(self.clock, self.words, stt_delay)
        self.llm = VirtualLLM(self.clock, replies)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.call = Call(self.media, VirtualTTS())
        self.call.bus.subscribe(self._publish)
        self.conv = Conversation(
            self.call,
            self.media,
            stt=self.stt,
            llm=self.llm,
            tts=VirtualTTS(),
            tools=tools or [],
            config=ConversationConfig(system_prompt="You help.", **cfg),
            vad=VirtualVAD(),
            turn_model=VirtualTurn(self.clock, self.words, p),
            text_turn=VirtualWords(self.clock, words_p),
            knowledge=knowledge,
            clock=self.clock,
            gate=LoudGate(),
        )
        self.task = asyncio.ensure_future(self.conv.run())
        self.voice_end: float | None = None

    def _publish(self, event: Event) -> None:
        named = sdk_arguments(self.call, event)
        if named is not None:
            self.events.append((named[0], named[1][1:]))

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def play(self, frames: list[bytes]) -> None:
        """The caller sends these frames, one every 20 ms."""
        for f in frames:
            self.media.put(AudioIn(f))
            await self.settle()
            await self.clock.advance(0.02)
            if peak(f) > 1000:
                self.voice_end = self.clock.now()
        await self.settle()

    async def wait(self, seconds: float) -> None:
        """Time passes with the caller silent (frames still flow)."""
        await self.play(silence(int(seconds * 1000)))

    def agent_frames(self) -> list[float]:
        """When each audible agent frame went out."""
        return [
            at for f, at in zip(self.media.sent, self.media.sent_at, strict=True) if peak(f) > 1000
        ]

    def first_agent_frame_after(self, t: float) -> float | None:
        return next((at for at in self.agent_frames() if at > t), None)

    def agent_said(self) -> list[str]:
        return [t.text for t in self.call.transcript if t.role == "agent"]

    def caller_said(self) -> list[str]:
        return [t.text for t in self.call.transcript if t.role == "caller"]

    async def hang_up(self) -> None:
        self.media.end("remote hung up")
        for _ in range(50):
            await self.clock.advance(0.02)
            await self.settle()
            if self.task.done():
                break
        await asyncio.wait_for(self.task, 5)
        await self.frames.close()


def ms(seconds: float | None) -> float:
    assert seconds is not None
    return round(seconds * 1000, 1)


async def test_a_speculated_reply_is_heard_on_the_frame_after_the_turn_ends() -> None:
    line = Line({"What time do you open?": "At nine."})
    await line.wait(0.2)
    await line.play(line.words.say("What time do you open?"))
    end = line.voice_end
    await line.wait(1.0)
    first = line.first_agent_frame_after(end or 0)
    (m,) = line.conv.metrics
    assert m.endpoint_reason == "finished"
    # the pause is noticed after 60 ms and decoded at once (100 ms); the
    # model's first words take 50 ms: the reply waits for nothing else (the
    # words' end-of-turn check, 30 ms, runs beside the model)
    assert 200 <= ms(first - end) <= 260, ms(first - end)  # type: ignore[operator]
    assert ms(m.endpoint - end) <= ms(first - end)  # type: ignore[operator]
    assert line.agent_said() == ["At nine."]
    await line.hang_up()


async def test_a_caller_who_goes_on_after_a_pause_is_not_answered_early() -> None:
    p = {"My order number is": 0.1, "My order number is four two seven": 0.95}
    line = Line(
        {"My order number is": "WRONG", "My order number is four two seven": "It shipped."},
        p=lambda text: p.get(text, 0.5),
        words_p={"My order number is": 0.0},  # as the language model reads it
    )
    await line.play(line.words.say("My order number is"))
    pause_start = line.clock.now()
    await line.wait(0.8)  # a long pause mid-sentence
    assert line.first_agent_frame_after(pause_start) is None, "talked into the pause"
    await line.play(line.words.say("four two seven"))
    await line.wait(1.0)
    assert line.agent_said() == ["It shipped."]
    assert line.caller_said() == ["My order number is four two seven"]
    # the half sentence was decoded and even answered, but never heard
    assert any(m[-1]["content"] == "My order number is" for m in line.llm.seen)
    await line.hang_up()


async def test_unsure_cues_fall_back_to_the_silence_rule() -> None:
    # two words whose voice sounds unfinished: the cues disagree
    line = Line({"Hello there": "Hi."}, p=lambda text: 0.05)
    await line.play(line.words.say("Hello there"))
    end = line.voice_end
    await line.wait(1.5)
    first = line.first_agent_frame_after(end or 0)
    # balanced: 950 ms of silence when the cues are unsure
    assert 920 <= ms(first - end) <= 1020, ms(first - end)  # type: ignore[operator]
    await line.hang_up()


async def test_trailing_words_hold_the_turn_open_even_when_the_model_is_sure() -> None:
    line = Line({"I want to speak to": "?"}, p=lambda text: 0.99)
    await line.play(line.words.say("I want to speak to"))
    end = line.voice_end
    await line.wait(1.8)
    first = line.first_agent_frame_after(end or 0)
    assert first is not None and ms(first - end) >= 1260  # the unfinished wait (1300)
    await line.hang_up()


async def test_barge_in_pauses_the_agent_within_two_frames_and_the_words_decide() -> None:
    long_answer = " ".join(["word"] * 40)
    line = Line({"Tell me everything.": long_answer, "Stop right there.": "Sure."})
    await line.play(line.words.say("Tell me everything."))
    await line.wait(1.0)
    assert line.conv.state is TurnState.SPEAKING
    onset = line.clock.now()
    await line.play(line.words.say("Stop right there."))
    # the agent's voice stopped two frames into the caller's (the cue), plus
    # the frame already on its way
    last_loud_before_quiet = max(t for t in line.agent_frames() if t <= onset + 0.2)
    assert ms(last_loud_before_quiet - onset) <= 80, ms(last_loud_before_quiet - onset)
    await line.wait(1.0)
    assert line.conv.barge_ins == 1
    cut, answer = line.call.transcript[1], line.call.transcript[-1]
    assert cut.interrupted and 0 < len(cut.text.split()) < 40
    assert answer.text == "Sure."
    assert {"role": "assistant", "content": cut.text} in line.conv.history
    await line.hang_up()


async def test_a_backchannel_resumes_the_agent_when_its_words_are_read() -> None:
    long_answer = " ".join(["word"] * 40)
    line = Line({"Tell me everything.": long_answer})
    await line.play(line.words.say("Tell me everything."))
    await line.wait(1.0)
    await line.play(line.words.say("uh-huh", ms=300))
    bc_end = line.clock.now()
    await line.wait(0.4)
    resumed = line.first_agent_frame_after(bc_end)
    # resumed as soon as the pause's transcript read "uh-huh" (60 + 100 ms),
    # not after the backchannel's own end of turn
    assert resumed is not None and ms(resumed - bc_end) <= 200, resumed and ms(resumed - bc_end)
    await line.wait(4.0)
    assert line.conv.false_barge_ins == 1 and line.conv.barge_ins == 0
    assert line.caller_said() == ["Tell me everything."]
    (answer,) = [t for t in line.call.transcript if t.role == "agent"]
    assert not answer.interrupted and answer.text.count("word") == 40
    await line.hang_up()


async def test_a_click_pauses_the_agent_only_briefly() -> None:
    line = Line({"Tell me everything.": " ".join(["word"] * 40)})
    await line.play(line.words.say("Tell me everything."))
    await line.wait(1.0)
    click_at = line.clock.now()
    # two loud frames webrtcvad hears, which the neural VAD does not confirm
    line.conv.listener.vad = _Deaf()
    await line.play(voice(9000, 40))
    await line.wait(0.6)
    line.conv.listener.vad = VirtualVAD()
    gap = [t for t in line.agent_frames() if t > click_at]
    resumed = gap[0] if gap else None
    assert resumed is not None
    pause = [b - a for a, b in zip(gap, gap[1:], strict=False)]
    assert max(pause, default=0) < 0.4, max(pause)
    assert line.conv.barge_ins == 0 and line.caller_said() == ["Tell me everything."]
    await line.hang_up()


class _Deaf:
    threshold = 0.5

    async def feed_async(self, pcm: bytes) -> list[VADResult]:
        return [VADResult(0.0, 0, False)]


async def test_the_agents_own_echo_does_not_interrupt_it() -> None:
    words = " ".join(["fine"] * 40)
    line = Line({"How are you?": words})
    await line.play(line.words.say("How are you?"))
    await line.wait(0.8)
    # the agent's words come back on the line, quieter and late
    await line.play(line.words.say("fine fine fine", ms=400))
    await line.wait(5.0)
    assert line.conv.barge_ins == 0
    (answer,) = [t for t in line.call.transcript if t.role == "agent"]
    assert not answer.interrupted
    await line.hang_up()


async def test_a_slow_recogniser_is_waited_for_and_a_failed_one_is_said() -> None:
    line = Line({"Hello, this is Sam": "Hi."}, stt_delay=0.4)
    await line.play(line.words.say("Hello, this is Sam"))
    end = line.voice_end
    await line.wait(1.0)
    assert line.agent_said() == ["Hi."]
    # waited for the words (60 + 400 ms), then for their check (30 ms)
    assert 470 <= ms(line.first_agent_frame_after(end or 0) - end) <= 560  # type: ignore[operator]
    line.stt.fail = True
    await line.play(line.words.say("Are you there"))
    await line.wait(2.5)
    assert line.agent_said()[-1] == "Sorry, I didn't catch that. Could you say it again?"
    await line.hang_up()


async def test_a_fact_is_the_answer_without_the_model() -> None:
    facts = Knowledge(
        [Fact("We open at nine.", "We open at nine.")],
        encoder=lambda texts: np.ones((len(texts), 4)) / 2,  # every text alike
    )
    line = Line({}, knowledge=facts)
    await line.play(line.words.say("When do you open"))
    await line.wait(1.0)
    assert line.agent_said() == ["We open at nine."]
    assert line.llm.seen == [] and line.conv.metrics[0].answer == "fact"
    await line.hang_up()


async def test_side_effects_wait_for_the_turn_and_lookups_do_not() -> None:
    ran: list[str] = []

    # coroutines, so they run on the virtual clock's loop, not in a thread
    @tool(read_only=True)
    async def lookup_order(order_number: str) -> dict[str, str]:
        """Look up an order by its number."""
        ran.append("lookup")
        return {"say": "It shipped."}

    async def cancel_order(order_number: str) -> dict[str, str]:
        """Cancel an order by its number."""
        ran.append("cancel")
        return {"say": "Cancelled."}

    replies = {
        "where is order 1": ToolCallRequest("a", "lookup_order", '{"order_number": "1"}'),
        "cancel order 1": ToolCallRequest("b", "cancel_order", '{"order_number": "1"}'),
    }
    # the words read unfinished: the turn waits long (1.3 s) before it ends
    line = Line(
        replies,
        words_p={"where is order 1": 0.001, "cancel order 1": 0.001},
        tools=[Tool.from_function(lookup_order), Tool.from_function(cancel_order)],
    )
    await line.play(line.words.say("where is order 1"))
    await line.wait(0.5)  # paused, turn not yet over
    assert ran == ["lookup"]  # ran on the speculation
    await line.wait(1.0)
    await line.play(line.words.say("cancel order 1"))
    await line.wait(0.5)
    assert ran == ["lookup"]  # not before the turn is the caller's
    await line.wait(1.0)
    assert ran == ["lookup", "cancel"]
    assert line.agent_said() == ["It shipped.", "Cancelled."]
    await line.hang_up()


async def test_a_barge_in_during_a_tool_keeps_the_history_whole() -> None:
    async def slow_lookup(order_number: str) -> dict[str, str]:
        """Look up an order by its number, slowly."""
        await asyncio.sleep(0.05)  # real time: runs while the test advances
        return {"status": "shipped"}

    replies = {
        "where is order 7": ToolCallRequest("t1", "slow_lookup", '{"order_number": "7"}'),
        "never mind": "Okay.",
        "after tool": "It shipped.",
    }
    line = Line(replies, tools=[Tool.from_function(slow_lookup)], tool_filler_after_s=0.0)
    await line.play(line.words.say("where is order 7"))
    await line.wait(0.25)
    await line.play(line.words.say("never mind"))
    for _ in range(20):
        await line.wait(0.1)
        await asyncio.sleep(0.01)
    roles = [m["role"] for m in line.conv.history]
    # every tool request is followed by its result, whatever came after
    for i, m in enumerate(line.conv.history):
        if m.get("tool_calls"):
            assert line.conv.history[i + 1]["role"] == "tool", roles
    assert line.call.tool_calls and line.call.tool_calls[0]["result"]
    await line.hang_up()


async def test_a_handler_that_speaks_does_not_stop_listening() -> None:
    line = Line({"What time do you open?": "At nine."})
    said: list[Any] = []

    async def on_dtmf() -> None:
        said.append(await line.call.say("You pressed one. " + " ".join(["more"] * 20)))

    handler = asyncio.ensure_future(on_dtmf())
    await line.wait(0.5)
    # while the handler's say is playing, the caller talks over it
    await line.play(line.words.say("What time do you open?"))
    await line.wait(1.0)
    assert said and said[0].interrupted  # the say was interrupted like a reply
    assert line.agent_said()[-1] == "At nine."
    await handler
    await line.hang_up()


async def test_dtmf_reaches_the_handlers_without_waiting_for_them() -> None:
    line = Line({})
    line.media.put(DtmfIn("5"))
    await line.wait(0.1)
    assert ("dtmf", ("5",)) in line.events
    await line.hang_up()


@pytest.mark.parametrize("frames", [True, False])
async def test_silence_is_a_reprompt_then_a_goodbye_and_a_hangup(frames: bool) -> None:
    line = Line({}, reprompt_after_s=0.5)
    for _ in range(100):
        if frames:
            await line.wait(0.1)
        else:
            await line.clock.advance(0.1)
            await line.settle()
        if line.media.hung_up:
            break
    assert line.agent_said() == ["Are you still there?", "I'll let you go now. Goodbye."]
    assert line.media.hung_up
    await line.hang_up()

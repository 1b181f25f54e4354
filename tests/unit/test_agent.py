"""The SDK on an in-memory call: greeting agent, events, barge-in trimming."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.fakes import FakeMedia, FakeTTS
from voiceos_switch import Agent, Call, ConfigurationError, TransferError
from voiceos_switch.audio.pacer import FrameClock
from voiceos_switch.call import heard_prefix
from voiceos_switch.media import DtmfIn
from voiceos_switch.settings import Settings


@pytest.fixture
async def clock() -> AsyncIterator[FrameClock]:
    c = FrameClock()
    yield c
    await c.close()


def make_agent(**kw: object) -> Agent:
    agent = Agent(settings=Settings(greeting="Hello there caller"), **kw)  # type: ignore[arg-type]
    agent._tts = FakeTTS()
    return agent


async def run_call(agent: Agent, media: FakeMedia) -> asyncio.Task[None]:
    task = asyncio.create_task(agent.handle_call(media))
    await asyncio.sleep(0.05)
    return task


async def test_greeting_then_keypad_then_goodbye_hangs_up(clock: FrameClock) -> None:
    agent = make_agent()
    turns: list[str] = []
    ended: list[Call] = []
    agent.on("transcript")(lambda call, turn: turns.append(turn.text))
    agent.on("call_ended")(lambda call: ended.append(call))
    media = FakeMedia(clock)
    task = await run_call(agent, media)
    await asyncio.sleep(0.4)  # the greeting is 3 words = 300 ms
    media.put(DtmfIn("5"))
    await asyncio.sleep(0.5)
    media.put(DtmfIn("#"))
    await asyncio.wait_for(task, 5)
    assert turns == ["Hello there caller", "You pressed 5.", "Goodbye."]
    assert media.hung_up and ended and ended[0].dtmf == ["5", "#"]
    assert sum(1 for f in media.sent if f != bytes(320)) >= 3 * 5 + 3 * 5 + 5


async def test_a_key_interrupts_the_greeting_and_the_transcript_keeps_what_was_heard(
    clock: FrameClock,
) -> None:
    agent = Agent(settings=Settings(greeting="one two three four five six seven eight nine ten"))
    agent._tts = FakeTTS()
    ended: list[Call] = []
    agent.on("call_ended")(lambda call: ended.append(call))
    media = FakeMedia(clock)
    task = await run_call(agent, media)
    await asyncio.sleep(0.3)
    media.put(DtmfIn("1"))
    await asyncio.sleep(0.6)
    media.end("remote hung up")
    await asyncio.wait_for(task, 5)
    greeting, answer = ended[0].transcript
    assert greeting.interrupted and greeting.planned_text.startswith("one two three")
    assert 2 <= len(greeting.text.split()) <= 5  # about 300 ms of 1 s was heard
    assert greeting.text.split() == greeting.planned_text.split()[: len(greeting.text.split())]
    assert (answer.text, answer.interrupted) == ("You pressed 1.", False)
    assert agent.calls == {}


async def test_say_interrupted_records_only_the_heard_words(clock: FrameClock) -> None:
    media = FakeMedia(clock)
    call = Call(media, FakeTTS())
    speaking = asyncio.create_task(call.say("alpha beta gamma delta epsilon zeta eta theta"))
    await asyncio.sleep(0.25)
    dropped = call.stop_speaking()
    turn = await asyncio.wait_for(speaking, 2)
    assert dropped > 0
    assert turn.interrupted
    assert turn.planned_text == "alpha beta gamma delta epsilon zeta eta theta"
    heard = turn.text.split()
    assert 1 <= len(heard) <= 4 and heard == turn.planned_text.split()[: len(heard)]
    media.end("done")


async def test_zero_asks_for_a_human_and_says_so_when_none_can_be_reached(
    clock: FrameClock,
) -> None:
    agent = make_agent()
    asked: list[str] = []
    media = FakeMedia(clock)
    task = await run_call(agent, media)
    agent.on("transcript")(lambda call, turn: asked.append(turn.text))
    media.put(DtmfIn("0"))
    await asyncio.sleep(1.6)
    media.end("remote hung up")
    await asyncio.wait_for(task, 5)
    assert "Connecting you to a person." in asked
    assert "Sorry, nobody can take your call right now." in asked


async def test_transfer_without_call_control_is_a_clear_error(clock: FrameClock) -> None:
    agent = make_agent()
    call = Call(FakeMedia(clock), FakeTTS())
    with pytest.raises(TransferError, match="no AMI connection"):
        await agent.transfer_to_human(call)


async def test_user_handlers_replace_the_builtin_and_their_errors_do_not_end_the_call(
    clock: FrameClock,
) -> None:
    agent = make_agent()
    seen: list[str] = []

    @agent.on("dtmf")
    async def pressed(call: Call, digit: str) -> None:
        seen.append(digit)
        if digit == "9":
            raise RuntimeError("bug in user code")

    media = FakeMedia(clock)
    task = await run_call(agent, media)
    for d in "95":
        media.put(DtmfIn(d))
    await asyncio.sleep(0.1)
    assert seen == ["9", "5"] and not media.ended
    media.end("remote hung up")
    await asyncio.wait_for(task, 5)


def test_configuration_errors_say_what_to_change() -> None:
    with pytest.raises(ConfigurationError, match="'local'.*'openai:<model>'"):
        Agent(model="gpt-4o")
    with pytest.raises(ConfigurationError, match="voice='robot'"):
        Agent(voice="robot")
    with pytest.raises(ConfigurationError, match="style='chatty'"):
        Agent(style="chatty")
    with pytest.raises(ConfigurationError, match="unknown event 'on_hangup'"):
        Agent().on("on_hangup")


async def test_refuses_to_listen_beyond_loopback_without_an_explicit_setting() -> None:
    agent = Agent(settings=Settings(audiosocket="0.0.0.0:9092"))
    with pytest.raises(ConfigurationError, match="no authentication"):
        await agent.run()


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.0, ""), (0.5, "a b"), (0.99, "a b c"), (1.0, "a b c d")]
)
def test_heard_prefix(fraction: float, expected: str) -> None:
    assert heard_prefix("a b c d", fraction) == expected

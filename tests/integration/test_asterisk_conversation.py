"""A spoken question through the real Asterisk gets a spoken, relevant answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.audiocheck import utterances
from tests.textcheck import normalise
from voiceos_switch.demo import demo_agent
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import place_call, read_wav_mono16, write_wav
from voiceos_switch.providers.stt import WhisperSTT
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration


async def test_question_answered_with_a_tool_through_asterisk(
    asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    # piper's natural voice: Whisper tiny.en cannot follow espeak-ng at 8 kHz
    agent = demo_agent(Settings(recordings_dir=tmp_path / "rec"), voice="piper")
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(agent.run(ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 180)
    question = tmp_path / "question.wav"
    write_wav(
        question,
        await PiperTTS(steady=True).synthesize(
            "Can you check on my order number four two seven?", 8000
        ),
        8000,
    )
    try:
        # the greeting takes about 2 s; then the caller asks and listens
        result = await place_call("100", play=question, delay=4.5, hold=10.0)
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
    assert result.answered and result.heard is not None
    (conversation,) = agent.finished
    assert conversation.metrics, "the agent took no turn"
    turn = conversation.metrics[0]
    assert normalise(turn.caller_text)[-3:] == ["four", "two", "seven"]
    assert turn.tool_calls == ["lookup_order"]
    # what the caller heard, transcribed utterance by utterance, carries the
    # tool's facts
    heard, rate = read_wav_mono16(result.heard)
    stt = WhisperSTT()
    words: list[str] = []
    for start, end in utterances(heard, rate):
        words += normalise((await stt.transcribe(heard[start:end], rate)).text)

    def has_facts(w: list[str]) -> bool:
        # the delivery day and the order number; "shipped" itself is often
        # misheard by tiny.en on a G.711 leg ("ship", "shit")
        text = " ".join(w)
        return "friday" in w and "order four two seven" in text

    if not has_facts(words):
        # a long quiet stretch can end Whisper's decode early: try the whole call
        words += normalise((await stt.transcribe(heard, rate)).text)
    assert has_facts(words), " ".join(words)

"""Right answers from the embedded stack, checked in what the caller heard.

The demo shop agent (embedded defaults: SmolLM2-135M, Moonshine, the
shop's facts as data and its order-lookup tool; the piper voice, see --voice)
behind a real AudioSocket connection; a scripted caller (piper through a
telephone channel) asks questions whose answers are in the agent's facts or
come from the tool. Each answer is the agent's audio between the end of the
question and the next question, transcribed with Whisper tiny.en; it is
right when the transcript holds the fact asked for (any of the accepted
words), and wrong when it holds a fact that contradicts it.

    .venv/bin/python bench/answers.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

#: (question, words of which one must be heard, words that must not be)
QUESTIONS: list[tuple[str, list[str], list[str]]] = [
    ("What time do you open on Saturday?", ["nine"], ["eleven", "ten", "eight"]),
    ("When do you close on weekdays?", ["six"], ["five", "seven"]),
    ("Are you open on Sunday?", ["closed"], []),
    ("Do you sell paint?", ["paint"], []),
    ("Do you sell garden supplies?", ["garden"], []),
    ("Can I return a hammer I bought last week?", ["thirty", "30"], []),
    ("Do I need my receipt to bring something back?", ["receipt"], []),
    ("Is delivery free?", ["fifty", "50"], []),
    ("How much does delivery cost?", ["free", "fifty", "50"], []),
    ("Where is the store?", ["main street", "twelve", "12"], []),
    ("Is there somewhere to park?", ["parking", "park"], []),
    ("Do you cut keys?", ["key"], []),
    ("How much does a key cost?", ["three", "3"], ["five", "ten"]),
    ("Can you check on my order number four two seven?", ["friday"], []),
    ("Where is my order five five one?", ["can't find", "cannot find", "not find"], []),
    ("What time do you open on Monday?", ["nine"], ["eleven", "ten"]),
    ("What are your opening hours?", ["nine"], []),
    ("What's your address?", ["main street", "twelve", "12"], []),
    ("Do you sell tools?", ["tools"], []),
    ("Do you deliver?", ["delivery", "deliver"], []),
    ("Are you near the post office?", ["post office"], []),
    ("Do you sell hardware?", ["hardware"], []),
    ("Are you open late on Friday?", ["six"], ["nine in the evening"]),
    ("How long do I have to return something?", ["thirty", "30"], []),
]


async def run(voice: str) -> dict[str, Any]:
    from tests.textcheck import normalise
    from voiceos_switch.demo import Step, call_demo_agent
    from voiceos_switch.providers.stt import WhisperSTT

    script = [Step(q) for q, _, _ in QUESTIONS]
    result, conv = await call_demo_agent(script, voice=voice)
    stt = WhisperSTT()
    rows = []
    turns = [t for t in result.turns if not t.backchannel]
    for i, (turn, (question, want, wrong)) in enumerate(zip(turns, QUESTIONS, strict=True)):
        end = turns[i + 1].started if i + 1 < len(turns) else float("inf")
        audio = result.agent_audio(turn.speech_end, end)
        heard = (await stt.transcribe(audio, 8000)).text if audio else ""
        # compared as words a listener hears: "9" is "nine", "$50" "five zero"
        said = " " + " ".join(normalise(heard)) + " "

        right = any(_hears(said, w) for w in want) and not any(_hears(said, w) for w in wrong)
        rows.append({"question": question, "heard": heard, "right": right})
    answered_by = [m.answer for m in conv.metrics]
    right = sum(r["right"] for r in rows)
    return {
        "questions": len(rows),
        "right": right,
        "accuracy": round(right / len(rows), 3),
        "answered_by": {k: answered_by.count(k) for k in sorted(set(answered_by))},
        "caller_heard_as": [m.caller_text for m in conv.metrics],
        "answers": rows,
    }


def _hears(said: str, word: str) -> bool:
    from tests.textcheck import normalise

    return f" {' '.join(normalise(word))} " in said


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--voice",
        default="piper",
        help="the agent's voice (piper: Whisper tiny.en cannot follow espeak-ng at 8 kHz, so "
        "with espeak the check would measure the transcriber, not the answer)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from voiceos_switch import log
    from voiceos_switch.settings import Settings

    log.setup(Settings().log_level)  # VOICEOS_LOG_LEVEL=DEBUG shows every turn's cues
    report = asyncio.run(run(args.voice))
    for r in report["answers"]:
        print(f"{'RIGHT' if r['right'] else 'WRONG'}  {r['question']}\n        heard: {r['heard']}")
    print(
        f"{report['right']} of {report['questions']} right ({report['accuracy']:.0%}); "
        f"answered by {report['answered_by']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

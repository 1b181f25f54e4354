"""Conversation latency on the embedded models, over a real AudioSocket connection.

A scripted caller (piper's voice, 20 ms frames in real time) talks to the
demo shop agent on its embedded defaults (Moonshine base, Smart Turn v3.2 and
the words' end-of-turn check, SmolLM2-135M, the shop's facts, espeak-ng) on
loopback. Measured on the caller's side of the wire:

- response: end of the caller's speech (its last voiced frame, not the
  synthesiser's trailing silence) -> first audible agent frame received;
- barge-in: the caller's voice starting over the agent -> the agent's last
  audible frame before it went quiet;
- backchannels ("uh-huh", "okay") said over the agent: how many stopped it;
- stuck states: questions that never got an answer.

The per-stage breakdown comes from the agent's own latency marks (relative
to the end of speech as its VAD saw it).

    .venv/bin/python bench/latency.py --turns 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from statistics import median
from typing import Any

from stats import pct  # bench/stats.py (scripts run from bench/)

QUESTIONS = [
    "What time do you open on Saturday?",
    "Do you sell paint?",
    "Can you check on my order number four two seven?",
    "Are you open on Sunday?",
    "Do you have garden supplies?",
    "Hi, how are you doing today?",  # no fact: the model answers
]
LONG_QUESTION = "Tell me about everything you sell."
INTERRUPTION = "Sorry, one more thing. Do you close at six?"
BACKCHANNELS = ["Uh-huh.", "Okay."]


def build_script(turns: int, interrupt_every: int, backchannel_every: int) -> list[Any]:
    from voiceos_switch.demo import Step

    script: list[Step] = []
    asked = 0
    while asked < turns:
        asked += 1
        if interrupt_every and asked % interrupt_every == 0:
            script.append(Step(LONG_QUESTION))
            script.append(Step(INTERRUPTION, interrupt_after_s=0.6))
            asked += 1
        elif backchannel_every and asked % backchannel_every == 0:
            script.append(Step(LONG_QUESTION))
            script.append(Step(BACKCHANNELS[asked % 2], interrupt_after_s=0.5, backchannel=True))
        else:
            script.append(Step(QUESTIONS[asked % len(QUESTIONS)]))
    return script


async def run(turns: int, interrupt_every: int, backchannel_every: int) -> dict[str, Any]:
    from voiceos_switch.demo import call_demo_agent

    script = build_script(turns, interrupt_every, backchannel_every)
    result, conv = await call_demo_agent(script)
    answered = [t for t in result.turns if not t.backchannel]
    responses = [t.response_ms for t in answered if t.response_ms is not None and t.onset is None]
    barge = [t.barge_in_ms for t in answered if t.barge_in_ms is not None]
    # the caller spoke where an interruption was due, but the agent had
    # already stopped (its whole answer was shorter than the wait)
    over_quiet = sum(1 for t in answered if t.onset is not None and t.barge_in_ms is None)
    stages: dict[str, list[float]] = {}
    for m in conv.metrics:
        for k, v in m.as_ms().items():
            if v is not None:
                stages.setdefault(k, []).append(v)
    answered_by = [m.answer for m in conv.metrics]
    reasons = [m.endpoint_reason for m in conv.metrics]
    llm = conv.llm.providers[0] if hasattr(conv.llm, "providers") else conv.llm
    first_tokens = getattr(llm, "first_token_s", [])
    backchannels = [t for t in result.turns if t.backchannel]
    # a backchannel that stopped the agent became a caller turn of its own
    heard = [t.text.lower().strip(" .!") for t in conv.call.transcript if t.role == "caller"]
    wrongly_taken = sum(1 for h in heard if h in ("uh-huh", "uh huh", "okay", "ok", "mm-hmm"))
    return {
        "turns": len(answered),
        "response_ms": {
            "p50": pct(responses, 0.5),
            "p95": pct(responses, 0.95),
            "n": len(responses),
        },
        "stages_p50_ms": {k: round(median(v), 1) for k, v in stages.items()},
        "barge_in_ms": {"p50": pct(barge, 0.5), "p95": pct(barge, 0.95), "n": len(barge)},
        "interruptions_over_a_quiet_agent": over_quiet,
        "backchannels": len(backchannels),
        "backchannels_that_stopped_the_agent": wrongly_taken,
        "barge_ins": conv.barge_ins,
        "ignored_barge_ins": conv.false_barge_ins,
        "stuck": sum(1 for t in answered if t.first_agent_audio is None),
        "tool_calls": sum(len(m.tool_calls) for m in conv.metrics),
        "answered_by": {k: answered_by.count(k) for k in sorted(set(answered_by))},
        "endpoint_reasons": {k: reasons.count(k) for k in sorted(set(reasons))},
        "llm_first_token_ms": _first_tokens(first_tokens),
        "per_turn": [
            {"said": t.said, "response_ms": t.response_ms, "barge_in_ms": t.barge_in_ms}
            for t in result.turns
        ],
        "agent_marks": [
            {"heard": m.caller_text, "answer": m.answer, "reason": m.endpoint_reason, **m.as_ms()}
            for m in conv.metrics
        ],
    }


def _first_tokens(samples: list[tuple[int, float]]) -> dict[str, Any]:
    """The local model's first token, by how much of the prompt was new: a
    prompt that extends the call's evaluated one costs only its new tokens."""
    warm = [s * 1000 for n, s in samples if n <= 60]
    cold = [s * 1000 for n, s in samples if n > 60]
    return {
        "warm_p50": pct(warm, 0.5),
        "warm_n": len(warm),
        "warm_new_tokens_p50": pct([float(n) for n, _ in samples if n <= 60], 0.5),
        "cold_p50": pct(cold, 0.5),
        "cold_n": len(cold),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--interrupt-every", type=int, default=4)
    ap.add_argument("--backchannel-every", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from voiceos_switch import log
    from voiceos_switch.settings import Settings

    log.setup(Settings().log_level)  # VOICEOS_LOG_LEVEL=DEBUG shows every turn's cues
    report = asyncio.run(run(args.turns, args.interrupt_every, args.backchannel_every))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

"""Response and barge-in through the real Asterisk, measured from the caller's side.

The demo shop agent (embedded defaults) serves behind the managed Asterisk
22; a lab call comes in over the simulated carrier trunk (real SIP INVITE,
RTP in G.711 mu-law on loopback) and plays the caller's questions with
Playback() while MixMonitor records, on the caller's own channel, what it
sends and what it hears. Everything is then read off those two recordings:

- response: the end of a question's voice in what the caller sent -> the
  first sound of the agent in what the caller heard;
- barge-in: the start of the caller's voice over the agent -> the agent's
  last sound before it went quiet.

    .venv/bin/python bench/sip.py --questions 12

With ``--pbx freeswitch`` the same carrier calls a FreeSWITCH on this
machine instead (its ``voiceos`` profile on 127.0.0.1:5080, started with
the shipped configuration and the same VOICEOS_STREAM_TOKEN and
VOICEOS_ESL_PASSWORD as this process): the same caller, recordings and
agent, so the two PBXs compare side by side. FreeSWITCH is not in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
from stats import pct  # bench/stats.py (scripts run from bench/)

RATE = 8000
FRAME = RATE // 50  # samples in 20 ms

QUESTIONS = [
    "What time do you open on Saturday?",
    "Do you sell paint?",
    "Can you check on my order number four two seven?",
    "Are you open on Sunday?",
    "Do you sell garden supplies?",
    "Is delivery free?",
    "Where is the store?",
    "Do you cut keys?",
]
LONG = "Tell me everything about the store."
CUT_IN = "Sorry, do you close at six?"


def loud_frames(pcm: bytes, threshold_db: float = -40.0) -> np.ndarray:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = len(x) // FRAME
    power = (x[: n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1) / 32768.0**2
    return np.asarray(10 * np.log10(power + 1e-12) > threshold_db)


def utterances(mask: np.ndarray, gap_frames: int = 15) -> list[tuple[int, int]]:
    """(first, last) loud frame of each stretch of sound."""
    spans: list[tuple[int, int]] = []
    start = last = None
    for i in np.flatnonzero(mask):
        if start is None:
            start = last = int(i)
        elif i - last > gap_frames:
            spans.append((start, last))
            start = last = int(i)
        else:
            last = int(i)
    if start is not None and last is not None:
        spans.append((start, last))
    return spans


async def run(
    questions: int, interruptions: int, voice: str, wait_s: float, pbx: str = "asterisk"
) -> dict[str, Any]:
    from voiceos_switch.demo import demo_agent
    from voiceos_switch.pbx.asterisk import LAB_DIR, AsteriskSandbox
    from voiceos_switch.pbx.labcall import place_call, read_wav_mono16, write_wav
    from voiceos_switch.providers.tts.piper import PiperTTS
    from voiceos_switch.settings import Settings

    sandbox = AsteriskSandbox()
    if not sandbox.running():
        raise SystemExit("start the managed Asterisk first: voiceos-switch asterisk up")
    tts = PiperTTS(steady=True)
    clips = {}
    lab = sandbox.lab_dir / "bench-sip"
    lab.mkdir(parents=True, exist_ok=True)
    lab.chmod(0o755)
    for i, text in enumerate([*QUESTIONS, LONG, CUT_IN]):
        path = lab / f"q{i}.wav"
        write_wav(path, await tts.synthesize(text, RATE), RATE)
        path.chmod(0o644)
        clips[text] = f"{LAB_DIR}/bench-sip/q{i}"
    steps = ["wait:4"]
    plan: list[str] = []
    for i in range(questions):
        q = QUESTIONS[i % len(QUESTIONS)]
        steps += [f"play:{clips[q]}", f"wait:{wait_s:g}"]
        plan.append("question")
    for _ in range(interruptions):
        steps += [f"play:{clips[LONG]}", "wait:1.6", f"play:{clips[CUT_IN]}", f"wait:{wait_s:g}"]
        plan += ["long", "cut-in"]
    steps.append("hangup")
    settings = Settings()
    if pbx == "freeswitch":
        settings = settings.model_copy(
            update={"freeswitch_stream": settings.freeswitch_stream or "127.0.0.1:9093"}
        )
    agent = demo_agent(settings, voice=voice)
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(agent.run(ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 180)
    try:
        result = await place_call("100", script="|".join(steps), timeout=600, pbx=pbx)
    finally:
        stop.set()
        await asyncio.wait_for(server, 60)
    assert result.sent is not None and result.heard is not None, "no recordings"
    sent, _ = read_wav_mono16(result.sent)
    heard, _ = read_wav_mono16(result.heard)
    said = utterances(loud_frames(sent))
    agent_loud = loud_frames(heard)
    responses, barge = [], []
    for kind, (first, last) in zip(plan, said, strict=False):
        if kind == "long":
            continue
        if kind == "cut-in":
            # the agent's last sound at or after the caller's voice starts
            j = first
            while j + 1 < len(agent_loud) and (
                agent_loud[j + 1] or agent_loud[j + 2 : j + 10].any()
            ):
                j += 1
            if agent_loud[first : first + 2].any():
                barge.append((j - first) * 20)
        after = np.flatnonzero(agent_loud[last + 1 :])
        if len(after):
            responses.append((int(after[0]) + 1) * 20)
    conv = agent.finished[-1] if agent.finished else None
    stages: dict[str, list[float]] = {}
    for m in conv.metrics if conv is not None else []:
        for k, v in m.as_ms().items():
            if v is not None:
                stages.setdefault(k, []).append(v)
    return {
        "questions": questions,
        "caller_utterances_found": len(said),
        "response_ms": {
            "p50": pct(responses, 0.5),
            "p95": pct(responses, 0.95),
            "n": len(responses),
            "all": responses,
        },
        "barge_in_ms": {"p50": pct(barge, 0.5), "p95": pct(barge, 0.95), "all": barge},
        "stages_p50_ms": {k: round(median(v), 1) for k, v in stages.items()},
        "agent_marks": [
            {
                "heard": m.caller_text,
                "answer": m.answer,
                "reason": m.endpoint_reason,
                "turn_p": m.turn_p,
                "text_p": m.text_p,
                **m.as_ms(),
            }
            for m in (conv.metrics if conv is not None else [])
        ],
        "hangup_cause": result.hangup_cause,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--interruptions", type=int, default=3)
    ap.add_argument("--voice", default="espeak")
    ap.add_argument("--wait", type=float, default=5.0, help="seconds after each question")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pbx", choices=["asterisk", "freeswitch"], default="asterisk")
    args = ap.parse_args()
    from voiceos_switch import log
    from voiceos_switch.settings import Settings

    log.setup(Settings().log_level)  # VOICEOS_LOG_LEVEL=DEBUG shows every turn's cues
    report = asyncio.run(run(args.questions, args.interruptions, args.voice, args.wait, args.pbx))
    report["pbx"] = args.pbx
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

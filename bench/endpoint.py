"""How the endpointer trades speed for cut-offs, on real and caller-like speech.

Two sets of turns, each as complete turns and as the same sentences cut at a
pause mid-sentence (the caller then goes on after 300-900 ms):

- real recorded 8 kHz telephone speech: Asterisk's core English prompts,
  cut at their own pauses between words (``bench/turn.py`` finds them);
- caller-like sentences ("my order number is | four two seven"), spoken
  whole by piper through a telephone channel and cut at the marked word
  (found with Whisper's word timings), so the voice carries on the way it
  does mid-sentence.

For each turn the cues are computed as the listener computes them when the
caller pauses (60 ms into the silence): the voice model's probability, the
recogniser's transcript, and the words' end-of-turn probability. Then the
endpoint rule of each style is played over the silence in 20 ms steps, with
each cue arriving when it would (the recogniser's measured decode time,
30 ms for the words' probability, 35 ms for the voice model): the silence at
which the turn is declared over. A complete turn's figure is its endpoint
delay; a cut turn is cut off when that delay is shorter than its pause.

    .venv/bin/python bench/endpoint.py --stt moonshine --json endpoint.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RATE = 8000
PAUSE_DETECT_MS = 60
PAUSES_MS = (300, 500, 700, 900)

#: caller-like sentences, cut where the bar is
CALLER = [
    "My order number is | four two seven.",
    "I'd like to | cancel my order.",
    "Can you check on my | order from last week?",
    "I was wondering if | you have any blue paint.",
    "The problem is that | my drill won't start.",
    "I need a hammer | and a box of nails.",
    "Do you have | garden hoses in stock?",
    "My name is | John Smith.",
    "I bought a ladder | last Tuesday.",
    "Um, | what time do you close tonight?",
    "I want to speak to | a manager please.",
    "What's the price of | the cordless drill?",
    "I'm calling about | a refund.",
    "Could you tell me | where the store is?",
    "So the thing is, | it arrived broken.",
    "We need two | bags of cement.",
    "Is it possible to | deliver on Saturday?",
    "Yeah, I think | that's all for today.",
    "My phone number is five five five, | one two three four.",
    "I ordered it on | Monday morning.",
]
CALLER_COMPLETE = [
    "What time do you open on Saturday?",
    "Do you sell garden supplies?",
    "Can you check on my order number four two seven?",
    "I'd like to return a hammer.",
    "Are you open on Sunday?",
    "Yes, that's right.",
    "No, thank you.",
    "How much is delivery?",
    "Where are you located?",
    "That's all, thanks.",
    "I need to speak to a person.",
    "Do you cut keys?",
]


@dataclass
class Turn:
    source: str  # "real" or "caller"
    kind: str  # "complete" or "cut"
    name: str
    pcm: bytes  # speech up to the end (or the cut)
    group: str = ""
    cues: dict[str, Any] = field(default_factory=dict)


async def caller_turns() -> list[Turn]:
    from tests.phone import phone_channel
    from voiceos_switch.providers.stt import WhisperSTT
    from voiceos_switch.providers.tts.piper import PiperTTS

    tts = PiperTTS(steady=True)
    stt = WhisperSTT()
    turns = []
    for text in CALLER_COMPLETE:
        pcm = phone_channel(await tts.synthesize(text, RATE))
        turns.append(Turn("caller", "complete", text, _trim(pcm)))
    for marked in CALLER:
        head, tail = (p.strip() for p in marked.split("|"))
        whole = f"{head} {tail}"
        pcm = phone_channel(await tts.synthesize(whole, RATE))
        words = (await stt.transcribe(pcm, RATE)).words
        n = len(head.split())
        if len(words) <= n:
            continue
        cut = (words[n - 1].end + words[n].start) / 2
        turns.append(Turn("caller", "cut", marked, _trim(pcm[: int(cut * RATE) * 2]), "caller"))
        turns.append(Turn("caller", "complete", whole, _trim(pcm)))
    return turns


def real_turns(root: Path, per_prompt: int) -> list[Turn]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import turn as turnbench  # bench/turn.py: the prompts and their pauses

    prompts = turnbench.load_prompts(root, 30.0)
    cuts, _ = turnbench.plan_cuts(prompts, 30.0, 60, per_prompt)
    out = [Turn("real", "complete", p.name, p.pcm[: p.speech_end]) for p in prompts]
    out += [Turn("real", "cut", f"{c.prompt}: {c.head}", c.pcm, c.group) for c in cuts]
    return out


def _trim(pcm: bytes) -> bytes:
    x = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(x) > 500)
    return pcm[: (int(loud[-1]) + 1) * 2] if len(loud) else pcm


async def compute_cues(turns: list[Turn], stt: Any) -> None:
    from voiceos_switch.audio.pcm import silence
    from voiceos_switch.conversation.endpoint import looks_unfinished
    from voiceos_switch.providers.eou import TranscriptTurn
    from voiceos_switch.providers.turn import SmartTurn

    voice = SmartTurn()
    await voice.load()
    words = TranscriptTurn()
    await words.load()
    for i, t in enumerate(turns):
        audio = t.pcm + silence(RATE, PAUSE_DETECT_MS)
        t0 = time.perf_counter()
        transcript = await stt.transcribe(audio, RATE)
        stt_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        text_p = await words.probability(transcript.text)
        t2 = time.perf_counter()
        turn_p = await voice.probability(audio, RATE)
        t.cues = {
            "text": transcript.text,
            "stt_ms": round(stt_ms, 1),
            "text_p": round(text_p, 4),
            "text_ms": round((t2 - t1) * 1000, 1),
            "turn_p": round(turn_p, 4),
            "unfinished_words": looks_unfinished(transcript.text),
        }
        if (i + 1) % 20 == 0:
            print(f"[endpoint] cues for {i + 1}/{len(turns)} turns", file=sys.stderr, flush=True)


def endpoint_delay(cues: dict[str, Any], style: Any) -> float:
    """The silence (ms) at which this style declares the turn over."""
    from voiceos_switch.conversation.endpoint import PENDING, decide

    text_at = PAUSE_DETECT_MS + cues["stt_ms"]
    text_p_at = text_at + 30
    turn_at = PAUSE_DETECT_MS + 35
    silence = float(PAUSE_DETECT_MS)
    while silence < 5000:
        text = cues["text"] if silence >= text_at else None
        text_p = cues["text_p"] if silence >= text_p_at else (PENDING if text else None)
        turn_p = cues["turn_p"] if silence >= turn_at else None
        if decide(style, silence, turn_p, text, text_p).over:
            return silence
        silence += 20
    return silence


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 1)


def report(turns: list[Turn]) -> dict[str, Any]:
    from voiceos_switch.conversation.endpoint import STYLES

    out: dict[str, Any] = {}
    for name, style in STYLES.items():
        rows: dict[str, Any] = {}
        for source in ("real", "caller", "all"):
            pick = [t for t in turns if source == "all" or t.source == source]
            done = [endpoint_delay(t.cues, style) for t in pick if t.kind == "complete"]
            cut = [(t, endpoint_delay(t.cues, style)) for t in pick if t.kind == "cut"]
            rows[source] = {
                "complete_turns": len(done),
                "endpoint_p50_ms": pct(done, 0.5),
                "endpoint_p95_ms": pct(done, 0.95),
                "cut_turns": len(cut),
                **{
                    f"cut_off_at_{p}ms_pause": round(
                        sum(1 for _, d in cut if d < p) / max(1, len(cut)), 3
                    )
                    for p in PAUSES_MS
                },
                "cut_off_names": sorted(t.name for t, d in cut if d < 700),
            }
        out[name] = rows
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from voiceos_switch.pbx.asterisk import AsteriskSandbox
    from voiceos_switch.providers import registry
    from voiceos_switch.settings import Settings

    turns = await caller_turns()
    root = args.root or AsteriskSandbox().root
    if not args.no_real:
        turns += real_turns(root, args.cuts_per_prompt)
    stt = registry.make_stt(Settings(stt=args.stt))
    await stt.load()
    await compute_cues(turns, stt)
    return {
        "stt": args.stt,
        "turns": len(turns),
        "styles": report(turns),
        "samples": [
            {"source": t.source, "kind": t.kind, "name": t.name, "group": t.group, **t.cues}
            for t in turns
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stt", default="whisper")
    ap.add_argument("--root", type=Path, default=None, help="the Asterisk root with the prompts")
    ap.add_argument("--cuts-per-prompt", type=int, default=1)
    ap.add_argument("--no-real", action="store_true", help="only the caller-like sentences")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--from-json", type=Path, help="re-score saved cues (after a rule change)")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        turns = [
            Turn(s["source"], s["kind"], s["name"], b"", s["group"], s) for s in saved["samples"]
        ]
        result = {**saved, "styles": report(turns)}
    else:
        result = asyncio.run(run(args))
    for name, rows in result["styles"].items():
        for source, r in rows.items():
            print(
                f"{name:9s} {source:6s} complete {r['complete_turns']:3d}: endpoint p50 "
                f"{r['endpoint_p50_ms']} p95 {r['endpoint_p95_ms']} ms | cut {r['cut_turns']:3d}: "
                + " ".join(f"{p}ms {r[f'cut_off_at_{p}ms_pause']:.0%}" for p in PAUSES_MS)
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

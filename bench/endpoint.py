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
caller pauses: the audio is the one a Listener (real VAD) hands its models
at that moment, and on it the voice model's probability, the recogniser's
transcript, and the words' end-of-turn probability. Then the
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
from stats import logistic, pct  # bench/stats.py (scripts run from bench/)

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
    "I'm looking for | a garden hose.",
    "Do you have any | paint brushes?",
    "My account number is | three one nine.",
    "Can I pick it up | tomorrow morning?",
    "I want to return | this drill.",
    "What time does the store | close on Friday?",
    "I'm not sure if | you have it.",
    "The order was | supposed to arrive yesterday.",
    "I was told that | it would be ready today.",
    "Could I get | a refund?",
    "How much would it | cost to deliver?",
    "Is there a way to | change my order?",
    "I'd like to know | your opening hours.",
    "We're building | a fence in the back yard.",
    "It's for | my garden.",
    "The drill I bought | doesn't work.",
    "Hi, um, | I have a question.",
    "Can you tell me | if it's in stock?",
    "I think the part number is | seven seven two.",
    "I need it | by Thursday.",
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
    "Thank you so much.",
    "Okay.",
    "That's it.",
    "Perfect, thanks.",
    "Can you repeat that?",
    "Hello?",
    "Do you have it in blue?",
    "I'll come by tomorrow.",
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
    """The caller-like set. A cut sentence is spoken with a comma at the bar
    (piper pauses there with the voice held up, as a caller who hesitates
    does) and cut inside that pause, so the head ends in silence, never in
    the first sound of the next word; a cut whose head does not read back
    as the words before the bar is dropped."""
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
        head, tail = (p.strip().rstrip(",") for p in marked.split("|"))
        pcm = phone_channel(await tts.synthesize(f"{head}, {tail}", RATE))
        words = (await stt.transcribe(pcm, RATE)).words
        n = len(head.split())
        if len(words) <= n:
            continue
        boundary = (words[n - 1].end + words[n].start) / 2
        gap = _quiet_run_near(pcm, boundary)
        if gap is None:
            continue
        cut = pcm[: gap * 2]
        heard = (await stt.transcribe(cut, RATE)).text
        if _words(heard)[-1:] != _words(head)[-1:]:
            print(f"[endpoint] dropped cut {marked!r}: head heard as {heard!r}", file=sys.stderr)
            continue
        turns.append(Turn("caller", "cut", marked, _trim(cut), "caller"))
        whole = phone_channel(await tts.synthesize(f"{head} {tail}", RATE))
        turns.append(Turn("caller", "complete", f"{head} {tail}", _trim(whole)))
    return turns


def _words(text: str) -> list[str]:
    from tests.textcheck import normalise

    return normalise(text)


def _quiet_run_near(pcm: bytes, at_s: float, min_ms: int = 40) -> int | None:
    """Sample index 10 ms into the quiet run (below -50 dB, at least
    ``min_ms``) whose end is nearest to ``at_s`` (the recogniser's word
    boundary, which tends to fall where the next word begins)."""
    from voiceos_switch.audio.levels import level_db

    step = RATE // 100  # 10 ms
    quiet = [level_db(pcm[i * 2 : (i + step) * 2]) < -50 for i in range(0, len(pcm) // 2, step)]
    runs, start = [], None
    for i, q in enumerate([*quiet, False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * 10 >= min_ms:
                runs.append((start, i))
            start = None
    if not runs:
        return None
    first, end = min(runs, key=lambda r: abs(r[1] * 0.01 - at_s))
    if abs(end * 0.01 - at_s) > 0.35:
        return None
    return (first + 1) * step


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


class _Keep:
    """Stands in for the recogniser and the voice model inside a Listener:
    keeps the audio it is given (what the real ones would be given)."""

    name = "keep"

    def __init__(self) -> None:
        self.audio: list[bytes] = []
        self.listener: Any = None
        self.at: list[float] = []

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Any:
        from voiceos_switch.providers.stt import Transcript

        self.audio.append(pcm)
        await asyncio.sleep(3600)
        return Transcript("")

    async def probability(self, pcm: bytes, sample_rate: int) -> float:
        await asyncio.sleep(3600)
        return 0.0


async def listener_view(pcm: bytes) -> tuple[bytes, float]:
    """What the listener hands its models when this turn's caller pauses:
    the audio, and how long after the voice's last sound it paused (ms)."""
    from voiceos_switch.audio.pcm import silence
    from voiceos_switch.conversation.listener import Listener
    from voiceos_switch.providers.vad import VADStream

    keep = _Keep()

    class Watched(Listener):
        def _start_decode(self, end_ms: float, force: bool = False) -> None:
            keep.at.append(self.audio_ms)  # when the pause was called, in stream time
            super()._start_decode(end_ms, force)

    listener = Watched(
        RATE, vad=VADStream(RATE), stt=keep, turn_model=keep, on_event=lambda e: None
    )
    audio = bytes(RATE // 5 * 2) + pcm + silence(RATE, 1000)
    end_ms = (RATE // 5 + len(pcm) // 2) * 1000 / RATE
    found: tuple[bytes, float] | None = None
    for i in range(0, len(audio), 320):
        await listener.feed(audio[i : i + 320])
        # the pause after the end (earlier ones were gaps between words)
        await asyncio.sleep(0)
        after = [(a, at) for a, at in zip(keep.audio, keep.at, strict=False) if at > end_ms]
        if after:
            found = after[0]
            break
    for task in listener.close():
        task.cancel()
    if found is None:
        return pcm + silence(RATE, PAUSE_DETECT_MS), float(PAUSE_DETECT_MS)
    return found[0], found[1] - end_ms


async def compute_cues(turns: list[Turn], stt: Any) -> None:
    from voiceos_switch.conversation.endpoint import looks_unfinished
    from voiceos_switch.providers.eou import TranscriptTurn
    from voiceos_switch.providers.turn import SmartTurn

    voice = SmartTurn()
    await voice.load()
    words = TranscriptTurn()
    await words.load()
    for i, t in enumerate(turns):
        audio, pause_ms = await listener_view(t.pcm)
        t0 = time.perf_counter()
        transcript = await stt.transcribe(audio, RATE)
        stt_ms = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        text_p = await words.probability(transcript.text)
        t2 = time.perf_counter()
        turn_p = await voice.probability(audio, RATE)
        t.cues = {
            "pause_ms": round(pause_ms, 1),
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

    pause = cues.get("pause_ms", PAUSE_DETECT_MS)
    text_at = pause + cues["stt_ms"]
    text_p_at = text_at + 30
    turn_at = pause + 35
    silence = float(pause)
    while silence < 5000:
        text = cues["text"] if silence >= text_at else None
        text_p = cues["text_p"] if silence >= text_p_at else (PENDING if text else None)
        turn_p = cues["turn_p"] if silence >= turn_at else None
        if decide(style, silence, turn_p, text, text_p).over:
            return silence
        silence += 20
    return silence


# ----------------------------------------------------------------- fitting
def _features(cues: dict[str, Any]) -> list[float]:
    from voiceos_switch.conversation.endpoint import features

    return features(cues["turn_p"], cues["text"], cues["text_p"])


def fit(samples: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Fit the cue weights on every turn, pick each style's thresholds on
    cross-validated scores, and write them where the endpointer reads them."""
    from voiceos_switch.conversation.endpoint import FEATURES

    x = np.array([[1.0, *_features(s)] for s in samples])
    y = np.array([1.0 if s["kind"] == "complete" else 0.0 for s in samples])
    w = logistic(x, y)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    cv = np.zeros(len(y))
    for fold in np.array_split(order, 5):
        train = np.setdiff1d(order, fold)
        cv[fold] = 1 / (1 + np.exp(-x[fold] @ logistic(x[train], y[train])))
    caller = np.array([s["source"] == "caller" for s in samples])
    # each style: the lowest "finished" threshold whose fast endings cut off
    # no more than its share of the caller-like cut turns
    allowed = {"patient": 0.0, "balanced": 0.05, "snappy": 0.1}
    styles = {}
    for name, share in allowed.items():
        for hi in np.arange(0.5, 0.99, 0.01):
            cut_fast = float(np.mean(cv[caller & (y == 0)] >= hi))
            if cut_fast <= share:
                break
        lo = 0.2
        styles[name] = {
            "finished_p": round(float(hi), 2),
            "unfinished_p": lo,
            "complete_turns_fast": round(float(np.mean(cv[caller & (y == 1)] >= hi)), 3),
            "cut_turns_fast": round(float(np.mean(cv[caller & (y == 0)] >= hi)), 3),
        }
    result = {
        "features": FEATURES,
        "weights": [round(float(v), 4) for v in w],
        "turns": {"complete": int(y.sum()), "cut": int((1 - y).sum())},
        "auc_cross_validated": round(_auc(cv, y), 3),
        "auc_words_alone": round(_auc(x[:, 2], y), 3),
        "auc_voice_alone": round(_auc(x[:, 1], y), 3),
        "styles": styles,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


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
    ap.add_argument(
        "--fit",
        type=Path,
        help="fit the cue weights and style thresholds on the cues and write them here "
        "(the shipped ones: voiceos_switch/conversation/endpoint_weights.json)",
    )
    args = ap.parse_args()
    if args.fit and args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(json.dumps(fit(saved["samples"], args.fit), indent=2))
        return
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

"""End-of-turn model (Smart Turn v3.2) on real recorded 8 kHz telephone speech.

The speech is Asterisk's core English prompts (one voice, recorded for the
phone network, 8 kHz) from the managed Asterisk root, with their transcripts.
Only prompts that are one full sentence are used (ending in . ? or !, at
least four words, not a title such as "Call-Forward on No Answer.").

- complete turns: each whole prompt, trimmed where its speech ends, plus
  trailing silence;
- incomplete turns: the same prompt cut where the speaker pauses between
  two words mid-sentence (a run of quiet 10 ms frames), at least two words
  before the end, plus the same trailing silence. The words left after the
  cut are checked against the transcript (Whisper tiny.en on the tail must
  read the transcript's last words), which rejects pauses inside a word
  (stop closures) and counts the words that remain. Cuts at a comma are
  reported apart: what comes before a comma is sometimes a whole clause.

The trailing silence is digital silence; the model's input ends with
50, 100, 200 or 300 ms of it (200 ms is the headline, the delay a VAD's
end-of-speech typically adds). Everything runs once at 8 kHz resampled to
16 kHz as the product does, and once more (at 200 ms) fed the same 8 kHz
bytes as if they were 16 kHz, to show what that mistake does.

Reported: probability distributions, for each threshold the rate of
complete turns called complete and of incomplete turns wrongly called
complete, AUC, thresholds for three styles, and the cost of one check on
one thread (features and model separately).

    .venv/bin/python bench/turn.py --json turn.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
RATE = 8000
FRAME_MS = 10
SILENCES_MS = (50, 100, 200, 300)
HEADLINE_MS = 200
THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(13)]  # 0.30 .. 0.90
NUMBERS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}


@dataclass
class Prompt:
    name: str
    text: str
    pcm: bytes
    speech_end: int  # byte offset where the speech ends


@dataclass
class Sample:
    prompt: str
    kind: str  # "complete" or "incomplete"
    pcm: bytes  # speech only, ending where the speech (or the cut) ends
    words_left: int = 0
    head: str = ""  # the transcript's words before the cut
    group: str = ""  # incomplete turns: "function-word", "phrase" or "comma"


# -- the prompts --------------------------------------------------------------


def words_of(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))
    return [NUMBERS.get(w, w) for w in words]


def one_full_sentence(text: str) -> bool:
    body = text.strip()
    if not body[:1].isupper():  # "...has left the conference.": half of a pair
        return False
    if not re.search(r"[.?!]$", body) or body.endswith("..."):
        return False
    if re.search(r"[.?!]\s", body[:-1]):  # more than one sentence
        return False
    words = body.split()
    if len(words) < 4:
        return False
    capitalised = sum(1 for w in words[1:] if w[:1].isupper())
    return capitalised * 2 < len(words) - 1  # not a title


def transcripts(root: Path) -> dict[str, str]:
    out = {}
    for line in gzip.open(root / TRANSCRIPTS.lstrip("/"), "rt", encoding="utf-8", errors="replace"):
        m = re.match(r"^([\w/-]+):\s*(.+)$", line.strip())
        if m:  # annotations such as "[beep tone]" are not speech
            out[m.group(1)] = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", m.group(2)).strip()
    return out


def frame_levels(pcm: bytes) -> np.ndarray:
    """dB level of each 10 ms frame."""
    n = RATE * FRAME_MS // 1000
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    x = x[: len(x) // n * n].reshape(-1, n)
    return np.asarray(10 * np.log10(np.mean(x * x, axis=1) + 1e-3))


def speech_mask(pcm: bytes, below_peak_db: float) -> np.ndarray:
    levels = frame_levels(pcm)
    if not len(levels):
        return np.zeros(0, dtype=bool)
    return np.asarray(levels > np.percentile(levels, 95) - below_peak_db)


def load_prompts(root: Path, below_peak_db: float) -> list[Prompt]:
    from voiceos_switch.pbx.labcall import read_wav_mono16

    sounds = root / SOUNDS.lstrip("/")
    prompts = []
    for name, text in sorted(transcripts(root).items()):
        wav = sounds / f"{name}.wav"
        if not one_full_sentence(text) or not wav.exists():
            continue
        pcm, rate = read_wav_mono16(wav)
        if rate != RATE:
            continue
        mask = speech_mask(pcm, below_peak_db)
        if not mask.any():
            continue
        end = (int(np.flatnonzero(mask)[-1]) + 1) * FRAME_MS * RATE // 1000 * 2
        prompts.append(Prompt(name, text, pcm, end))
    return prompts


def pauses(prompt: Prompt, below_peak_db: float, min_ms: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of quiet runs of at least ``min_ms`` inside the speech."""
    mask = speech_mask(prompt.pcm[: prompt.speech_end], below_peak_db)
    voiced = np.flatnonzero(mask)
    out = []
    start = None
    for i in range(int(voiced[0]), int(voiced[-1]) + 1):
        if not mask[i] and start is None:
            start = i
        elif mask[i] and start is not None:
            if (i - start) * FRAME_MS >= min_ms:
                per = FRAME_MS * RATE // 1000 * 2
                out.append((start * per, i * per))
            start = None
    return out


#: a head ending on one of these is plainly unfinished ("Please enter the")
FUNCTION_WORDS = set(
    "the a an to of for with and or but nor your my his her its their our this that these "
    "those is are was were be been being has have had will would shall should can could may "
    "might must do does did not if than then at in on by from as into about please".split()
)


def cut_group(text: str, words_left: int) -> tuple[str, str]:
    """(head, group) of a cut leaving ``words_left`` words of ``text``."""
    tokens = text.replace("-", " ").split()
    head = " ".join(tokens[:-words_left])
    last = tokens[-words_left - 1] if len(tokens) > words_left else ""
    if last.endswith((",", ";", ":")):
        return head, "comma"
    if words_of(last) and words_of(last)[-1] in FUNCTION_WORDS:
        return head, "function-word"
    return head, "phrase"


def plan_cuts(
    prompts: list[Prompt], below_peak_db: float, min_pause_ms: int, per_prompt: int
) -> tuple[list[Sample], dict[str, int]]:
    """Incomplete turns: cuts at pauses whose tail reads as the transcript's last words."""
    from voiceos_switch.providers.stt import WhisperSTT

    stt = WhisperSTT()
    samples: list[Sample] = []
    counts = {"pauses": 0, "tail_misheard": 0, "too_few_words": 0}
    for prompt in prompts:
        ref = words_of(prompt.text)
        found: list[Sample] = []
        for start, end in pauses(prompt, below_peak_db, min_pause_ms):
            counts["pauses"] += 1
            tail = prompt.pcm[end : prompt.speech_end]
            heard = words_of(stt.transcribe_blocking(tail, RATE, final=False).text)
            if len(heard) < 2 or len(heard) >= len(ref):
                counts["too_few_words"] += 1
                continue
            if heard != ref[-len(heard) :]:
                counts["tail_misheard"] += 1
                continue
            head, group = cut_group(prompt.text, len(heard))
            found.append(
                Sample(
                    prompt.name,
                    "incomplete",
                    prompt.pcm[:start],
                    words_left=len(heard),
                    head=head,
                    group=group,
                )
            )
        if len(found) > per_prompt:  # spread the cuts over the sentence
            picks = np.linspace(0, len(found) - 1, per_prompt).round().astype(int)
            found = [found[i] for i in sorted(set(picks.tolist()))]
        samples += found
    return samples, counts


# -- scoring --------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q * 100)), 3)


def auc(pos: list[float], neg: list[float]) -> float | None:
    """Probability that a complete turn scores above an incomplete one."""
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return round(float(np.mean((p > n) + 0.5 * (p == n))), 3)


GROUPS = ("function-word", "phrase", "comma")


def rates(pos: list[float], neg: dict[str, list[float]]) -> list[dict[str, float]]:
    """Per threshold: complete turns called complete, incomplete ones called complete."""

    def at_or_above(values: list[float], t: float) -> float:
        return round(float(np.mean(np.asarray(values) >= t)), 3) if values else 0.0

    everything = [p for g in GROUPS for p in neg[g]]
    return [
        {
            "threshold": t,
            "complete_recognised": at_or_above(pos, t),
            "incomplete_as_complete": at_or_above(everything, t),
            **{f"{g}_as_complete": at_or_above(neg[g], t) for g in GROUPS},
        }
        for t in THRESHOLDS
    ]


def styles(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Thresholds for three endpointing styles, from the measured rates.

    snappy: the highest threshold that still recognises 95% of finished
    turns (the agent answers at once nearly every time, and cuts in on
    more pauses); patient: the lowest that calls at most 5% of cut-off turns
    complete, or the highest measured when none does (the rest wait for the
    silence timeout); balanced: the best recognised-minus-false rate, ties
    to the higher threshold, kept between the two.
    """
    snappy = next((r for r in reversed(rows) if r["complete_recognised"] >= 0.95), rows[0])
    patient = next((r for r in rows if r["incomplete_as_complete"] <= 0.05), rows[-1])
    balanced = max(
        reversed(rows), key=lambda r: r["complete_recognised"] - r["incomplete_as_complete"]
    )
    balanced = min(
        max(balanced, snappy, key=lambda r: r["threshold"]), patient, key=lambda r: r["threshold"]
    )
    return {"patient": patient, "balanced": balanced, "snappy": snappy}


def distribution(values: list[float]) -> dict[str, Any]:
    hist, _ = np.histogram(values, bins=10, range=(0.0, 1.0))
    return {
        "n": len(values),
        "p10": pct(values, 0.1),
        "p25": pct(values, 0.25),
        "p50": pct(values, 0.5),
        "p75": pct(values, 0.75),
        "p90": pct(values, 0.9),
        "histogram_0.1": hist.tolist(),
    }


def score(
    turn: Any,
    samples: list[Sample],
    silence_ms: int,
    rate_told: int,
    timings: dict[str, list[float]],
) -> list[float]:
    from voiceos_switch.audio.pcm import silence
    from voiceos_switch.providers.turn import features_from_pcm

    out = []
    for s in samples:
        pcm = s.pcm + silence(RATE, silence_ms)
        t0 = time.perf_counter()
        feats = features_from_pcm(pcm, rate_told)
        t1 = time.perf_counter()
        out.append(turn.predict_features(feats))
        t2 = time.perf_counter()
        timings["features_ms"].append((t1 - t0) * 1000)
        timings["model_ms"].append((t2 - t1) * 1000)
    return out


def summary(samples: list[Sample], probs: list[float]) -> dict[str, Any]:
    pairs = list(zip(samples, probs, strict=True))
    pos = [p for s, p in pairs if s.kind == "complete"]
    neg = {g: [p for s, p in pairs if s.kind == "incomplete" and s.group == g] for g in GROUPS}
    everything = [p for g in GROUPS for p in neg[g]]
    rows = rates(pos, neg)
    return {
        "complete": distribution(pos),
        "incomplete": distribution(everything),
        **{f"incomplete_{g}": distribution(neg[g]) for g in GROUPS},
        "auc": auc(pos, everything),
        **{f"auc_{g}": auc(pos, neg[g]) for g in GROUPS},
        "thresholds": rows,
        "styles": styles(rows),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from voiceos_switch.pbx.asterisk import AsteriskSandbox
    from voiceos_switch.providers.turn import SmartTurn

    root = args.root or AsteriskSandbox().root
    if not (root / SOUNDS.lstrip("/")).is_dir():
        raise SystemExit(
            f"no Asterisk prompts under {root}: run `voiceos-switch asterisk up` first"
        )
    prompts = load_prompts(root, args.below_peak_db)[: args.limit or None]
    t0 = time.perf_counter()
    cuts, cut_counts = plan_cuts(
        prompts, args.below_peak_db, args.min_pause_ms, args.cuts_per_prompt
    )
    plan_s = time.perf_counter() - t0
    complete = [Sample(p.name, "complete", p.pcm[: p.speech_end]) for p in prompts]
    samples = complete + cuts

    turn = SmartTurn(threads=args.threads)
    turn.load_blocking()
    timings: dict[str, list[float]] = {"features_ms": [], "model_ms": []}
    by_silence: dict[str, Any] = {}
    per_sample: list[dict[str, Any]] = [
        {
            "prompt": s.prompt,
            "kind": s.kind,
            "words_left": s.words_left,
            "group": s.group,
            "head": s.head,
        }
        for s in samples
    ]
    for ms in SILENCES_MS:
        probs = score(turn, samples, ms, RATE, timings)
        by_silence[str(ms)] = summary(samples, probs)
        for rec, p in zip(per_sample, probs, strict=True):
            rec[f"p_{ms}ms"] = round(p, 4)
    wrong_rate = score(turn, samples, HEADLINE_MS, 16000, {"features_ms": [], "model_ms": []})
    for rec, p in zip(per_sample, wrong_rate, strict=True):
        rec["p_8k_read_as_16k"] = round(p, 4)
    return {
        "prompts": len(prompts),
        "complete_turns": len(complete),
        "incomplete_turns": len(cuts),
        "incomplete_by_group": {g: sum(1 for c in cuts if c.group == g) for g in GROUPS},
        "cut_search": {**cut_counts, "seconds": round(plan_s, 1)},
        "threads": args.threads,
        "headline_silence_ms": HEADLINE_MS,
        "cost_ms": {
            "features_p50": pct(timings["features_ms"], 0.5),
            "features_p95": pct(timings["features_ms"], 0.95),
            "model_p50": pct(timings["model_ms"], 0.5),
            "model_p95": pct(timings["model_ms"], 0.95),
            "n": len(timings["model_ms"]),
        },
        "resampled_8k": by_silence,
        "8k_read_as_16k": summary(samples, wrong_rate),
        "samples": per_sample,
    }


# -- output -------------------------------------------------------------------


def print_report(r: dict[str, Any]) -> None:
    head = r["resampled_8k"][str(HEADLINE_MS)]
    wrong = r["8k_read_as_16k"]
    groups = r["incomplete_by_group"]
    print(
        f"{r['complete_turns']} complete and {r['incomplete_turns']} incomplete turns from "
        f"{r['prompts']} real 8 kHz prompts; the incomplete ones cut after a function word "
        f"{groups['function-word']}, at another phrase boundary {groups['phrase']}, "
        f"at a comma {groups['comma']}"
    )
    c = r["cost_ms"]
    print(
        f"cost of one check on {r['threads']} thread(s): features {c['features_p50']} ms p50 / "
        f"{c['features_p95']} p95, model {c['model_p50']} ms p50 / {c['model_p95']} p95 "
        f"(n={c['n']})"
    )
    print()
    print(f"probability, {HEADLINE_MS} ms trailing silence       p10    p25    p50    p75    p90")
    for label, d in (
        ("complete", head["complete"]),
        ("incomplete, all", head["incomplete"]),
        ("  after a function word", head["incomplete_function-word"]),
        ("  at another phrase boundary", head["incomplete_phrase"]),
        ("  at a comma", head["incomplete_comma"]),
        ("complete, 8k read as 16k", wrong["complete"]),
        ("incomplete, 8k read as 16k", wrong["incomplete"]),
    ):
        if d["n"]:
            print(
                f"  {label:38s}"
                + "".join(f" {d[k]:6.3f}" for k in ("p10", "p25", "p50", "p75", "p90"))
            )
    print()
    print(f"{HEADLINE_MS} ms trailing silence: share called complete")
    print(
        "threshold  complete | incomplete: all  function-word  phrase   comma"
        " | 8k read as 16k: complete  incomplete"
    )
    for row, bad in zip(head["thresholds"], wrong["thresholds"], strict=True):
        print(
            f"  {row['threshold']:.2f}     {row['complete_recognised']:6.1%}  |"
            f"       {row['incomplete_as_complete']:6.1%}     {row['function-word_as_complete']:6.1%}"
            f"     {row['phrase_as_complete']:6.1%}  {row['comma_as_complete']:6.1%}"
            f" |                 {bad['complete_recognised']:6.1%}      "
            f"{bad['incomplete_as_complete']:6.1%}"
        )
    print(
        f"  AUC {head['auc']} (function-word {head['auc_function-word']}, phrase "
        f"{head['auc_phrase']}, comma {head['auc_comma']}); 8k read as 16k: AUC {wrong['auc']}"
    )
    print()
    print(
        "trailing   AUC   at 0.5: complete / incomplete   styles: threshold (complete / incomplete)"
    )
    for ms, s in r["resampled_8k"].items():
        at = next(row for row in s["thresholds"] if row["threshold"] == 0.5)
        print(
            f"  {ms:>3} ms  {s['auc']:.3f}         {at['complete_recognised']:6.1%} / "
            f"{at['incomplete_as_complete']:6.1%}     "
            + ", ".join(
                f"{k} {v['threshold']:.2f} ({v['complete_recognised']:.0%} / "
                f"{v['incomplete_as_complete']:.0%})"
                for k, v in s["styles"].items()
            )
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, help="Asterisk root (default: the managed one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    ap.add_argument("--min-pause-ms", type=int, default=60)
    ap.add_argument("--below-peak-db", type=float, default=35.0, help="quiet = this far below loud")
    ap.add_argument("--cuts-per-prompt", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

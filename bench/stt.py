"""Speech recognisers side by side on real recorded 8 kHz telephone speech.

Moonshine base (prepared ONNX, int8) and Whisper tiny.en (faster-whisper,
int8), both in process on the CPU, transcribe the same prompts from
Asterisk's core English sound set (one real voice, recorded for the phone
network), read from the managed Asterisk root (``voiceos-switch asterisk up``
builds it). The prompts are drawn alike from each length bucket; each is
decoded as recorded and again after another telephone channel (band-limit
and G.711 mu-law), one recogniser straight after the other so that the
machine's load falls on both alike.

Reported per recogniser and channel: word error rate (normalised as a
listener would: case, punctuation, digits) and decode time (wall clock of
``transcribe_blocking`` on 8 kHz input, resampling included) p50/p95, overall
and by prompt length.

    .venv/bin/python bench/stt.py --prompts 80 --json stt.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from pathlib import Path
from statistics import mean
from typing import Any

from stats import pct  # bench/stats.py (scripts run from bench/)

#: prompt length buckets, seconds: [low, high)
BUCKETS = [(0.0, 1.5), (1.5, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, 1e9)]


def bucket_name(low: float, high: float) -> str:
    return f">={low:g} s" if high > 1e8 else f"{low:g}-{high:g} s"


def load_prompts(root: Path, count: int) -> list[tuple[str, str, bytes]]:
    """(name, transcript, 8 kHz PCM16) for ``count`` prompts spread over every
    length bucket, shortest first (0: all of them)."""
    from voiceos_switch.pbx.labcall import read_wav_mono16

    doc = root / "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    sounds = root / "usr/share/asterisk/sounds/en_US_f_Allison"
    if not doc.exists() or not sounds.is_dir():
        sys.exit(f"no Asterisk prompts under {root}: run `voiceos-switch asterisk up` first")
    texts = {}
    for line in gzip.open(doc, "rt", encoding="utf-8", errors="replace"):
        m = re.match(r"^([\w/-]+):\s*(.+)$", line.strip())
        if m:  # annotations ("(simple tone sound plays)", "<beep>") are not speech
            text = re.sub(r"\([^)]*\)|\[[^\]]*\]|<[^>]*>", " ", m.group(2)).strip()
            if re.search(r"[A-Za-z0-9]", text):
                texts[m.group(1)] = text
    prompts = []
    for name, text in texts.items():
        wav = sounds / f"{name}.wav"
        if wav.exists():
            pcm, rate = read_wav_mono16(wav)
            if rate == 8000:
                prompts.append((name, text, pcm))
    prompts.sort(key=lambda p: (len(p[2]), p[0]))
    if not 0 < count < len(prompts):
        return prompts
    # the same share from every length bucket (most prompts are single words),
    # evenly spaced inside it; what a small bucket cannot fill goes to the rest
    groups = [[p for p in prompts if lo <= len(p[2]) / 16000 < hi] for lo, hi in BUCKETS]
    quota = dict.fromkeys(range(len(groups)), 0)
    left = count
    while left:
        open_ = [i for i, g in enumerate(groups) if quota[i] < len(g)]
        for i in open_[:left]:
            quota[i] += 1
            left -= 1
    chosen = []
    for i, group in enumerate(groups):
        n = quota[i]
        step = (len(group) - 1) / (n - 1) if n > 1 else 0
        chosen += [group[round(k * step)] for k in range(n)]
    return chosen


def summarise(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    errors = sum(r[key]["errors"] for r in rows)
    words = sum(r["words"] for r in rows)
    times = [r[key]["ms"] for r in rows]
    return {
        "n": len(rows),
        "words": words,
        "wer_pct": round(100 * errors / words, 2) if words else None,
        "p50_ms": pct(times, 0.5),
        "p95_ms": pct(times, 0.95),
        "mean_ms": round(mean(times), 1) if times else None,
        "ms_per_audio_s": round(sum(times) / sum(r["audio_s"] for r in rows), 1) if rows else None,
    }


def run(root: Path, count: int, threads: int, word_timings: bool, progress: bool) -> dict[str, Any]:
    from tests.phone import phone_channel
    from tests.textcheck import wer
    from voiceos_switch.providers.moonshine import MoonshineSTT
    from voiceos_switch.providers.stt import WhisperSTT

    prompts = load_prompts(root, count)
    started = time.perf_counter()
    moonshine = MoonshineSTT(threads=threads)
    moonshine._model()  # prepared once, then cached
    prepare_s = time.perf_counter() - started
    whisper = WhisperSTT(threads=threads)
    recognisers: dict[str, Any] = {"moonshine": moonshine, "whisper": whisper}
    warm = prompts[len(prompts) // 2][2]
    for stt in recognisers.values():  # load, and the first decode's one-off costs
        stt.transcribe_blocking(warm, 8000, final=word_timings)

    channels = {"recorded": lambda pcm: pcm, "phone_channel": phone_channel}
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
    for i, (name, text, pcm) in enumerate(prompts):
        for channel, through in channels.items():
            audio = through(pcm)
            row: dict[str, Any] = {"name": name, "text": text, "audio_s": len(audio) / 16000}
            for key, stt in recognisers.items():
                t = time.perf_counter()
                result = stt.transcribe_blocking(audio, 8000, final=word_timings)
                ms = (time.perf_counter() - t) * 1000
                errors, words = wer(text, result.text)
                row[key] = {"heard": result.text, "errors": errors, "ms": round(ms, 1)}
                row["words"] = words
            rows[channel].append(row)
        if progress:
            print(f"\r{i + 1}/{len(prompts)} prompts", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)

    report: dict[str, Any] = {
        "prompts": len(prompts),
        "words": sum(r["words"] for r in rows["recorded"]),
        "audio_s": round(sum(r["audio_s"] for r in rows["recorded"]), 1),
        "threads": threads,
        "whisper_word_timings": word_timings,
        "moonshine_load_s": round(prepare_s, 2),
        "channels": {},
    }
    for channel, channel_rows in rows.items():
        entry: dict[str, Any] = {k: summarise(channel_rows, k) for k in recognisers}
        entry["by_length"] = {}
        for low, high in BUCKETS:
            inside = [r for r in channel_rows if low <= r["audio_s"] < high]
            if inside:
                entry["by_length"][bucket_name(low, high)] = {
                    k: summarise(inside, k) for k in recognisers
                }
        report["channels"][channel] = entry
    report["per_prompt"] = rows
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['prompts']} prompts, {report['words']} words, {report['audio_s']} s of "
        f"real 8 kHz telephone speech; {report['threads']} threads each; Whisper "
        f"{'with' if report['whisper_word_timings'] else 'without'} word timings",
        "",
        f"{'channel':<14} {'length':<10} {'n':>3}  "
        f"{'moonshine WER':>13} {'p50':>6} {'p95':>6}   {'whisper WER':>11} {'p50':>6} {'p95':>6}",
    ]

    def line(channel: str, label: str, entry: dict[str, Any]) -> str:
        m, w = entry["moonshine"], entry["whisper"]
        return (
            f"{channel:<14} {label:<10} {m['n']:>3}  {m['wer_pct']:>12.1f}% {m['p50_ms']:>6.0f} "
            f"{m['p95_ms']:>6.0f}   {w['wer_pct']:>10.1f}% {w['p50_ms']:>6.0f} {w['p95_ms']:>6.0f}"
        )

    for channel, entry in report["channels"].items():
        lines.append(line(channel, "all", entry))
        for label, sub in entry["by_length"].items():
            lines.append(line("", label, sub))
    lines.append("")
    lines.append("decode times in ms (wall clock, one decode at a time)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=80, help="how many (0: every prompt)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads per recogniser")
    ap.add_argument(
        "--no-word-timings",
        action="store_true",
        help="decode with final=False (Whisper then skips its word timings)",
    )
    ap.add_argument("--root", type=Path, help="Asterisk root (default: the managed one)")
    ap.add_argument("--json", type=Path, help="write the report, with every prompt's result")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args()
    from voiceos_switch.settings import Settings

    root = args.root or Settings().asterisk_dir / "root"
    report = run(root, args.prompts, args.threads, not args.no_word_timings, not args.quiet)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()

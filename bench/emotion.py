"""What reading the caller's emotion costs a call.

Four scripted callers of the evaluation set (``bench/emotion_set.py``: two
espeak-ng voices, two piper, through a telephone channel) and a 30 s
monologue go through the live call's listener and emotion reader
(``conversation/recorded.py``). Measured on the reader itself:

- scoring latency per utterance: :meth:`EmotionReader.read` at the end of
  each turn (the prosody's percentiles, the words' cues and valence, the
  fusion), p50 / p99 / max;
- CPU while the caller talks: the time spent in :meth:`EmotionReader.follow`
  (the pitch tracker and levels, hop by hop) per second of caller audio,
  as a share of one core.

    .venv/bin/python bench/emotion.py [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from stats import pct  # bench/stats.py (scripts run from bench/)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATE = 8000


class Timed:
    """An EmotionReader whose follow() and read() are timed."""

    def __init__(self) -> None:
        from voiceos_switch.providers.emotion import EmotionReader

        self.reader = EmotionReader(RATE)
        self.follow_s = 0.0
        self.speaking_s = 0.0
        self.read_ms: list[float] = []
        real_follow, real_read = self.reader.follow, self.reader.read

        def follow(pcm: bytes, speaking: bool, turn: int) -> None:
            t0 = time.perf_counter()
            real_follow(pcm, speaking, turn)
            self.follow_s += time.perf_counter() - t0
            if speaking:
                self.speaking_s += len(pcm) / 2 / RATE

        def read(turn: int, text: str, final: bool = True) -> Any:
            t0 = time.perf_counter()
            out = real_read(turn, text, final)
            self.read_ms.append((time.perf_counter() - t0) * 1000)
            return out

        self.reader.follow = follow  # type: ignore[method-assign]
        self.reader.read = read  # type: ignore[method-assign]


async def run() -> dict[str, Any]:
    import emotion_set as es  # bench/emotion_set.py

    from voiceos_switch.conversation.recorded import read_recording
    from voiceos_switch.providers import registry
    from voiceos_switch.settings import Settings

    stt = registry.make_stt(Settings())
    await stt.load()
    recordings = []
    for index in (0, 1, 2, 5):
        pcm, _ = await es.caller_recording(index, es.CALLERS[index])
        recordings.append((f"caller {index} ({es.CALLERS[index].engine})", pcm))
    monologue = " ".join(es.SENTENCES["frustrated"][:6] + es.SENTENCES["neutral"][:6])
    pcm = await es._speak(es.CALLERS[0], monologue.replace(".", ","), "neutral", False)
    recordings.append(("30 s monologue", es._line(pcm[: RATE * 2 * 30], 99)))
    rows = []
    all_ms: list[float] = []
    follow_s = speaking_s = 0.0
    for name, pcm in recordings:
        timed = Timed()
        utterances = await read_recording(pcm, RATE, stt, reader=timed.reader)
        all_ms += timed.read_ms
        follow_s += timed.follow_s
        speaking_s += timed.speaking_s
        rows.append(
            {
                "recording": name,
                "utterances": len(utterances),
                "read_ms_p50": pct(timed.read_ms, 0.5),
                "read_ms_max": round(max(timed.read_ms), 2) if timed.read_ms else None,
                "cpu_while_talking_pct": round(100 * timed.follow_s / timed.speaking_s, 2),
            }
        )
        print(f"[emotion] {name}: {rows[-1]}", file=sys.stderr)
    return {
        "utterances": len(all_ms),
        "read_ms": {
            "p50": pct(all_ms, 0.5),
            "p99": pct(all_ms, 0.99),
            "max": round(max(all_ms), 2),
        },
        "cpu_while_talking_pct_of_a_core": round(100 * follow_s / speaking_s, 2),
        "caller_audio_s": round(speaking_s, 1),
        "recordings": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

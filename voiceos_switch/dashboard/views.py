"""What the dashboard's pages show, computed from the stored calls.

Plain functions over the store (they run in a worker thread, never on the
bridge's loop): the recent calls, one call with its analyses, the overview
across calls (latency histogram and stages, cost per minute, the emotion
heatmap, topic clusters) and the A/B comparison of prompt variants.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from .. import variants as ab
from ..events import TURN_STAGES
from ..records.store import Store

STATES = ("frustrated", "confused", "urgent", "satisfied")
STAGES = TURN_STAGES
#: histogram bins of the answer latency, milliseconds
LATENCY_BIN_MS = 100
#: the heatmap's time buckets, seconds into the call
HEAT_BUCKET_S = 10
HEAT_BUCKETS = 12


def _analysis(analyses: dict[str, Any], kind: str) -> dict[str, Any]:
    got = analyses.get(kind) or {}
    result = got.get("result") if got.get("status", "ok") == "ok" else None
    return result if isinstance(result, dict) else {}


def call_row(record: dict[str, Any], analyses: dict[str, Any]) -> dict[str, Any]:
    """One call as the list shows it."""
    summary = _analysis(analyses, "summary")
    sentiment = _analysis(analyses, "sentiment")
    answers = ab.answers_ms(record)
    return {
        "id": record["id"],
        "pbx": record.get("pbx"),
        "agent": record.get("agent"),
        "variant": record.get("variant"),
        "caller": record.get("caller"),
        "called": record.get("called"),
        "started_at": record.get("started_at"),
        "duration_s": record.get("duration_s"),
        "turns": sum(1 for t in record.get("turns", []) if t.get("text")),
        "disposition": summary.get("disposition"),
        "sentiment": sentiment.get("label"),
        "transferred": bool(record.get("transfers")),
        "flags": len(record.get("review_flags", [])),
        "cost_per_minute": record.get("cost", {}).get("per_minute"),
        "latency_ms": round(median(answers)) if answers else None,
        "analysed": record.get("completed_at") is not None,
    }


def calls(store: Store, limit: int = 50) -> list[dict[str, Any]]:
    return [call_row(r, a) for r, a in store.recent_records(limit)]


def call(store: Store, call_id: str) -> dict[str, Any] | None:
    """One call: its record (recording paths replaced by whether they exist)
    and its analyses (the topic's embedding left out)."""
    record = store.get_call(call_id)
    if record is None:
        return None
    analyses = store.get_analyses(call_id)
    topics = analyses.get("topics", {}).get("result")
    if isinstance(topics, dict):
        topics.pop("embedding", None)
    record["recordings"] = sorted(
        leg for leg, path in record.get("recordings", {}).items() if Path(path).exists()
    )
    return {
        "record": record,
        "analyses": analyses,
        "row": call_row(record, analyses),
        "heat": heat_of_call(record),
    }


def recording_path(store: Store, call_id: str, leg: str) -> Path | None:
    """The WAV file of one leg of a stored call (only a path its record names)."""
    if leg not in ("caller", "agent"):
        return None
    record = store.get_call(call_id)
    if record is None:
        return None
    path = record.get("recordings", {}).get(leg)
    if not path or not Path(path).is_file():
        return None
    return Path(path)


def overview(store: Store, limit: int = 500) -> dict[str, Any]:
    """Across the recent calls: answer latency (histogram, stage medians),
    cost per minute, the emotion heatmap and the topic clusters."""
    pairs = store.recent_records(limit)
    answers: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)
    heat_sum = [[0.0] * HEAT_BUCKETS for _ in STATES]
    heat_n = [0] * HEAT_BUCKETS
    topics: Counter[str] = Counter()
    keywords: dict[str, Counter[str]] = defaultdict(Counter)
    minutes = cost = 0.0
    for record, analyses in pairs:
        answers += ab.answers_ms(record)
        for turn in record.get("latency", []):
            if turn.get("interrupted"):
                continue
            for stage in STAGES:
                if turn.get(stage) is not None:
                    stages[stage].append(float(turn[stage]))
        for reading in record.get("emotions", []):
            if not reading.get("final", True):
                continue
            bucket = min(HEAT_BUCKETS - 1, int(max(0.0, reading.get("t", 0.0)) // HEAT_BUCKET_S))
            heat_n[bucket] += 1
            for i, state in enumerate(STATES):
                heat_sum[i][bucket] += float(reading.get("scores", {}).get(state, 0.0))
        topic = _analysis(analyses, "topics")
        if topic.get("cluster") and topic["cluster"] != "none":
            topics[topic["cluster"]] += 1
            keywords[topic["cluster"]].update(topic.get("keywords", []))
        minutes += float(record.get("duration_s", 0.0)) / 60
        cost += float(record.get("cost", {}).get("total", 0.0))
    bins: Counter[int] = Counter(int(a // LATENCY_BIN_MS) for a in answers)
    return {
        "calls": len(pairs),
        "latency": {
            "turns": len(answers),
            "p50_ms": round(_quantile(answers, 0.5)) if answers else None,
            "p90_ms": round(_quantile(answers, 0.9)) if answers else None,
            "histogram": [
                {"from_ms": b * LATENCY_BIN_MS, "turns": bins[b]}
                for b in range(min(bins), max(bins) + 1)
            ]
            if bins
            else [],
            "stages_p50_ms": {s: round(median(stages[s])) for s in STAGES if stages.get(s)},
        },
        "cost": {
            "minutes": round(minutes, 3),
            "total": round(cost, 6),
            "per_minute": round(cost / minutes, 6) if minutes else 0.0,
            "by_day": store.cost_rollup(),
        },
        "heatmap": {
            "states": list(STATES),
            "bucket_s": HEAT_BUCKET_S,
            "readings": heat_n,
            "mean": [
                [
                    round(heat_sum[i][b] / heat_n[b], 3) if heat_n[b] else None
                    for b in range(HEAT_BUCKETS)
                ]
                for i in range(len(STATES))
            ],
        },
        "topics": [
            {"cluster": c, "calls": n, "keywords": [k for k, _ in keywords[c].most_common(5)]}
            for c, n in topics.most_common()
        ],
    }


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def heat_of_call(record: dict[str, Any]) -> dict[str, Any]:
    """One call's emotion over its turns: the four scores per caller turn."""
    rows = [r for r in record.get("emotions", []) if r.get("final", True)]
    return {
        "states": list(STATES),
        "turns": [
            {
                "t": r.get("t"),
                "text": r.get("text", ""),
                "scores": [r.get("scores", {}).get(s) for s in STATES],
                "announced": r.get("announced", []),
            }
            for r in rows
        ],
    }


def variants(store: Store, order: Sequence[str] = (), limit: int = 5000) -> dict[str, Any]:
    """The prompt variants compared (the first of ``order`` is the baseline)."""
    return ab.compare(store.recent_records(limit), order)

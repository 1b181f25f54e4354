"""A/B prompt variants: each call gets one variant of the agent's prompt,
split by share, and the variants are compared on what the calls show.

Assignment is a hash of the call's id, so a call keeps its variant however
often it is looked up, and the split holds across bridge processes. The
comparison puts every variant beside the first on four measures (length of
the call, share handed to a person, the caller's sentiment after the call,
the agent's answer latency) with the counts and the test that say whether a
difference is real: Welch's t-test for the means, Fisher's exact test for
the escalation rate, and, where a difference is not yet real, about how many
calls per variant would tell one of that size apart (80 % power, 5 % level).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean, median, variance
from typing import Any

#: the level a difference must reach to be called real
ALPHA = 0.05


@dataclass(frozen=True)
class Variant:
    """One variant of the agent: its name, its share of the calls and what it
    changes (``None``: as the agent is configured)."""

    name: str
    share: float = 1.0
    system_prompt: str | None = None
    greeting: str | None = None
    style: str | None = None


def check(variants: Sequence[Variant]) -> list[Variant]:
    """The variants, checked: distinct names, positive shares (they are
    normalised, so 1 and 1 split evenly)."""
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variants: names must differ (got {names})")
    for v in variants:
        if not v.name or not isinstance(v.name, str):
            raise ValueError(f"variants: every variant needs a name (got {v.name!r})")
        if not (isinstance(v.share, int | float) and v.share > 0 and math.isfinite(v.share)):
            raise ValueError(f"variant {v.name!r}: share must be a positive number")
    return list(variants)


def _unit(call_id: str) -> float:
    digest = hashlib.sha256(call_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick(call_id: str, variants: Sequence[Variant]) -> Variant | None:
    """The call's variant (the same for the same call id)."""
    if not variants:
        return None
    total = sum(v.share for v in variants)
    point = _unit(call_id) * total
    for v in variants:
        point -= v.share
        if point < 0:
            return v
    return variants[-1]


# --- statistics, in the standard library ------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta (Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 + aa * d
        d = 1 / (d if abs(d) > tiny else tiny)
        c = 1 + aa / c if abs(1 + aa / c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1) < 1e-12:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if not math.isfinite(t):
        return 0.0
    return _betainc(df / 2, 0.5, df / (df + t * t))


def welch(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's two-sided p-value for a difference in means (None: too few)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = variance(a) / len(a), variance(b) / len(b)
    diff = fmean(b) - fmean(a)
    if va + vb == 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t_two_sided_p(t, df)


def fisher(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact two-sided p-value: ``k1`` of ``n1`` against ``k2`` of ``n2``."""
    total, hits = n1 + n2, k1 + k2

    def logp(k: int) -> float:
        return (
            _logcomb(n1, k) + _logcomb(n2, hits - k) - _logcomb(total, hits)
            if 0 <= hits - k <= n2
            else -math.inf
        )

    seen = logp(k1)
    lo, hi = max(0, hits - n2), min(n1, hits)
    p = sum(math.exp(lp) for k in range(lo, hi + 1) if (lp := logp(k)) <= seen + 1e-9)
    return min(1.0, p)


def _logcomb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def calls_needed(a: Sequence[float], b: Sequence[float]) -> int | None:
    """Calls per variant to tell apart a difference of the size seen
    (80 % power at the 5 % level; None: no difference, or too few to say)."""
    if len(a) < 2 or len(b) < 2:
        return None
    delta = abs(fmean(b) - fmean(a))
    spread = (variance(a) + variance(b)) / 2
    if delta == 0:
        return None
    return max(2, math.ceil(2 * (1.96 + 0.8416) ** 2 * spread / delta**2))


# --- the comparison -------------------------------------------------------------------


def answers_ms(record: Mapping[str, Any]) -> list[float]:
    """A stored call's answer latencies: each turn answered and not cut, from
    the caller's last word to the agent's first frame (ms)."""
    return [
        float(t["first_frame_sent"])
        for t in record.get("latency", [])
        if t.get("first_frame_sent") is not None and not t.get("interrupted")
    ]


def _measures(record: Mapping[str, Any], analyses: Mapping[str, Any]) -> dict[str, Any]:
    answers = answers_ms(record)
    sentiment = (analyses.get("sentiment") or {}).get("result") or {}
    return {
        "duration_s": float(record.get("duration_s", 0.0)),
        "escalated": bool(record.get("transfers")),
        "sentiment": sentiment.get("overall") if isinstance(sentiment, dict) else None,
        "latency_ms": median(answers) if answers else None,
    }


MEASURES = ("duration_s", "sentiment", "latency_ms")


def compare(
    calls: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    order: Sequence[str] = (),
) -> dict[str, Any]:
    """Every variant's calls summed up and set against the first variant's.

    ``calls``: ``(record, analyses)`` pairs; records without a variant are
    left out. ``order``: the variants as configured (the first is the one
    the others are compared with); others seen in the records follow."""
    by: dict[str, list[dict[str, Any]]] = {}
    for record, analyses in calls:
        name = record.get("variant")
        if name:
            by.setdefault(str(name), []).append(_measures(record, analyses))
    names = [n for n in order if n in by] + sorted(n for n in by if n not in order)
    variants = []
    for name in names:
        rows = by[name]
        out: dict[str, Any] = {"name": name, "calls": len(rows)}
        for m in MEASURES:
            values = [r[m] for r in rows if r[m] is not None]
            out[m] = {"n": len(values), "mean": round(fmean(values), 3) if values else None}
        escalated = sum(r["escalated"] for r in rows)
        out["escalation"] = {
            "n": len(rows),
            "k": escalated,
            "rate": round(escalated / len(rows), 3),
        }
        variants.append(out)
    comparisons = []
    if names:
        base = by[names[0]]
        for name in names[1:]:
            other = by[name]
            tests: dict[str, Any] = {}
            for m in MEASURES:
                a = [r[m] for r in base if r[m] is not None]
                b = [r[m] for r in other if r[m] is not None]
                p = welch(a, b)
                tests[m] = _verdict(p, calls_needed(a, b) if p is not None else None)
                if a and b:
                    tests[m]["difference"] = round(fmean(b) - fmean(a), 3)
            ka, kb = sum(r["escalated"] for r in base), sum(r["escalated"] for r in other)
            p = fisher(ka, len(base), kb, len(other))
            ra, rb = [float(r["escalated"]) for r in base], [float(r["escalated"]) for r in other]
            tests["escalation"] = _verdict(p, calls_needed(ra, rb))
            tests["escalation"]["difference"] = round(kb / len(other) - ka / len(base), 3)
            comparisons.append({"baseline": names[0], "variant": name, "tests": tests})
    return {"variants": variants, "comparisons": comparisons, "alpha": ALPHA}


def _verdict(p: float | None, needed: int | None) -> dict[str, Any]:
    if p is None:
        return {"p": None, "real": False, "says": "too few calls (at least 2 each)"}
    real = p < ALPHA
    says = f"real (p={p:.3f})" if real else f"not yet real (p={p:.2f})"
    if not real and needed is not None:
        says += f"; about {needed} calls per variant would tell a difference this size"
    return {"p": round(p, 4), "real": real, "says": says, "calls_needed": needed}

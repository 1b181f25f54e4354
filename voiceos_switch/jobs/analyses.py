"""What the workers compute for each call. Plain functions of the stored
record (and, for the transcript, its recordings), so they can be tested and
timed without a queue."""

from __future__ import annotations

import asyncio
import math
import re
import wave
from collections import Counter
from collections.abc import Sequence
from statistics import mean
from typing import Any

import numpy as np

from ..records.record import costs
from ..settings import Settings


class PermanentError(Exception):
    """Retrying cannot help: the input itself is bad (a corrupt recording)."""


# --- re-transcription -----------------------------------------------------------


def read_recording(path: str) -> tuple[bytes, int]:
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise PermanentError(
                    f"recording {path} is not 16-bit mono "
                    f"({w.getsampwidth() * 8}-bit, {w.getnchannels()} channels)"
                )
            return w.readframes(w.getnframes()), w.getframerate()
    except (wave.Error, EOFError) as exc:
        raise PermanentError(f"recording {path} is unreadable: {exc}") from exc
    except FileNotFoundError as exc:
        raise PermanentError(f"recording {path} is missing") from exc


def transcript(record: dict[str, Any], settings: Settings, context: dict[str, Any]) -> Any:
    """Both legs again with Whisper, with word timings; caller and agent apart."""
    from ..providers.stt import WhisperSTT

    legs = record.get("recordings") or {}
    if not legs:
        return {"skipped": "the call has no bridge-side recording"}
    stt = WhisperSTT(model_dir=settings.stt_model_dir)
    out: dict[str, Any] = {}
    for leg in ("caller", "agent"):
        if leg not in legs:
            continue
        pcm, rate = read_recording(legs[leg])
        result = asyncio.run(stt.transcribe(pcm, rate))
        words = [
            {
                "word": w.text,
                "start": round(w.start, 2),
                "end": round(w.end, 2),
                "p": round(w.probability, 3),
            }
            for w in result.words
        ]
        out[leg] = {
            "text": result.text,
            "words": words,
            "confidence": round(mean(w.probability for w in result.words), 3) if words else None,
            "audio_s": round(len(pcm) / 2 / rate, 2),
        }
    caller = out.get("caller", {})
    out["asr_confidence"] = caller.get("confidence")
    return out


# --- summary -------------------------------------------------------------------------


def disposition(record: dict[str, Any]) -> str:
    said = [t for t in record["turns"] if t["role"] == "caller" and t["text"]]
    if record.get("transfers"):
        return "escalated"
    if not said:
        return "no_conversation"
    if record.get("review_flags"):
        return "needs_review"
    return "handled"


def action_items(record: dict[str, Any]) -> list[str]:
    items = [f"Follow up on {c['name']} {c['arguments']}" for c in record.get("tool_calls", [])]
    items += [f"Human follow-up by {t}" for t in record.get("transfers", [])]
    items += [f"Review: {f['reason']}" for f in record.get("review_flags", [])]
    return items


def summary(record: dict[str, Any], settings: Settings, context: dict[str, Any]) -> Any:
    """A short summary from the configured model (the embedded one by default),
    the disposition and action items from what the call record shows."""
    from ..providers import registry
    from ..providers.llm import TextDelta

    text = "\n".join(f"{t['role']}: {t['text']}" for t in record["turns"] if t["text"])
    if not text:
        gist = "Nothing was said on the call."
    else:
        llm = registry.make_llm(settings.analysis_model, settings)
        messages = [
            {"role": "system", "content": "Summarise the phone call in one short sentence."},
            {"role": "user", "content": text[-4000:]},
        ]

        async def run() -> str:
            parts = [e.text async for e in llm.stream(messages, []) if isinstance(e, TextDelta)]
            return "".join(parts).strip()

        gist = asyncio.run(run())
    return {
        "summary": gist,
        "disposition": disposition(record),
        "action_items": action_items(record),
        "model": settings.analysis_model,
    }


# --- sentiment and emotion over time --------------------------------------------------


def score_text(text: str, earlier: Sequence[str] = ()) -> dict[str, Any]:
    """One caller turn from its words alone: sentiment in [-1, 1] (VADER's
    compound valence) and the four states in [0, 1] from the live reader's
    fitted model with the voice held at the caller's baseline."""
    from ..providers.emotion.fusion import PROSODY_FEATURES, derived
    from ..providers.emotion.reader import shipped_weights
    from ..providers.emotion.words import word_features

    feats, cues = word_features(text, earlier)
    scores = shipped_weights().scores(derived({**dict.fromkeys(PROSODY_FEATURES, 0.0), **feats}))
    return {
        "sentiment": round(feats["valence"], 3),
        **{state: round(p, 3) for state, p in scores.items()},
        "cues": cues,
    }


def sentiment(record: dict[str, Any], settings: Settings, context: dict[str, Any]) -> Any:
    """Per caller turn, from the words: sentiment in [-1, 1] and the four
    emotions in [0, 1]; beside them the live reading of the same turns
    (voice and words) and where the two disagree."""
    start = record["started_at"]
    timeline = []
    said: list[str] = []
    for t in record["turns"]:
        if t["role"] != "caller" or not t["text"]:
            continue
        timeline.append(
            {
                "t": round(t["started_at"] - start, 2),
                "text": t["text"],
                **score_text(t["text"], said),
            }
        )
        said.append(t["text"])
    overall = round(mean(p["sentiment"] for p in timeline), 3) if timeline else 0.0
    live = [e for e in record.get("emotions", []) if e.get("final", True)]
    return {
        "overall": overall,
        "label": "positive" if overall > 0.2 else "negative" if overall < -0.2 else "neutral",
        "timeline": timeline,
        "live": live,
        "live_vs_words": compare_live(live, timeline),
    }


def compare_live(live: list[dict[str, Any]], words: list[dict[str, Any]]) -> dict[str, Any]:
    """Per state: the highest live score and the highest from the words
    alone, and the turns where only the voice (live) or only the words
    crossed 0.5; the live readings are matched to turns by their text."""
    from ..providers.emotion.words import STATES

    by_text = {w["text"].strip().lower(): w for w in words}
    out: dict[str, Any] = {}
    for state in STATES:
        live_only, words_only = [], []
        for entry in live:
            w = by_text.get(str(entry.get("text", "")).strip().lower())
            if w is None:
                continue
            now, then = entry["scores"].get(state, 0.0) >= 0.5, w[state] >= 0.5
            if now and not then:
                live_only.append(entry["text"])
            elif then and not now:
                words_only.append(entry["text"])
        out[state] = {
            "live_max": max((e["scores"].get(state, 0.0) for e in live), default=None),
            "words_max": max((w[state] for w in words), default=None),
            "live_only": live_only,
            "words_only": words_only,
        }
    return out


# --- topics across calls -----------------------------------------------------------------

_WORDS = re.compile(r"[a-z']+")

STOPWORDS = set(
    """a about all am an and any are as at be but by can could do does for from
    have hello hi how i i'm if in is it it's just know like me my no not of on
    one or please so that the their there they this to uh um want was we what
    when where which who will with would yes you your okay ok oh well need tell
    thank thanks""".split()
)


def _terms(text: str) -> list[str]:
    return [w for w in _WORDS.findall(text.lower()) if w not in STOPWORDS and len(w) > 2]


def _caller_text(record: dict[str, Any]) -> str:
    return " ".join(t["text"] for t in record["turns"] if t["role"] == "caller" and t["text"])


def kmeans(x: np.ndarray, k: int, seeds: int = 10) -> np.ndarray:
    """Cosine k-means on unit vectors, the best of several seeded starts."""
    best: tuple[float, np.ndarray] | None = None
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        centres = x[rng.choice(len(x), k, replace=False)]
        assign = np.zeros(len(x), dtype=int)
        for _ in range(50):
            assign = np.argmax(x @ centres.T, axis=1)
            new = np.stack(
                [
                    x[assign == j].mean(axis=0) if np.any(assign == j) else centres[j]
                    for j in range(k)
                ]
            )
            new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-9)
            if np.allclose(new, centres):
                break
            centres = new
        score = float(np.sum(np.max(x @ centres.T, axis=1)))
        if best is None or score > best[0]:
            best = (score, assign)
    assert best is not None
    return best[1]


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    dist = 1.0 - x @ x.T
    scores = []
    for i in range(len(x)):
        same = labels == labels[i]
        same[i] = False
        if not same.any():
            scores.append(0.0)
            continue
        a = float(dist[i, same].mean())
        b = min(float(dist[i, labels == c].mean()) for c in set(labels.tolist()) if c != labels[i])
        scores.append((b - a) / max(a, b, 1e-9))
    return float(np.mean(scores))


def cluster_calls(vectors: dict[str, np.ndarray], texts: dict[str, str]) -> dict[str, str]:
    """Topic clusters over every call: k-means on the sentence embeddings
    with k chosen by silhouette (2 to 10), each cluster named by the
    strongest TF-IDF keyword of what its callers said."""
    ids = list(vectors)
    if len(ids) < 3:
        return {i: (keywords_of(texts[i], texts) or ["none"])[0] for i in ids}
    x = np.stack([vectors[i] for i in ids])
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(10, len(ids) - 1) + 1):
        labels = kmeans(x, k)
        score = silhouette(x, labels)
        if best is None or score > best[0]:
            best = (score, labels)
    assert best is not None
    names: dict[int, str] = {}
    for c in sorted(set(best[1].tolist())):
        members = " ".join(texts[ids[j]] for j in range(len(ids)) if best[1][j] == c)
        names[c] = (keywords_of(members, texts) or [f"topic-{c}"])[0]
    return {ids[j]: names[int(best[1][j])] for j in range(len(ids))}


def keywords_of(text: str, corpus: dict[str, str], n: int = 5) -> list[str]:
    mine = Counter(_terms(text))
    df: Counter[str] = Counter()
    for t in corpus.values():
        df.update(set(_terms(t)))
    total = sum(mine.values()) or 1
    weights = {
        w: c / total * math.log((1 + len(corpus)) / (1 + df[w]) + 1) for w, c in mine.items()
    }
    return sorted(weights, key=lambda w: (-weights[w], w))[:n]


def topics(record: dict[str, Any], settings: Settings, context: dict[str, Any]) -> Any:
    """The call's topic among every call analysed so far: a sentence embedding
    of what the caller said (all-MiniLM-L6-v2, in numpy), clustered with the
    stored embeddings of the other calls (k-means, k by silhouette), the
    cluster named by its strongest keyword. Chosen over TF-IDF clustering by
    measurement (bench/topics.py, docs/benchmarks.md)."""
    from ..providers.embed import MiniLM

    text = _caller_text(record)
    corpus = {r["id"]: _caller_text(r) for r in context.get("corpus", [])}
    corpus[record["id"]] = text
    if not text:
        return {"keywords": [], "cluster": "none", "embedding": [], "calls_clustered": 0}
    vec = MiniLM.shared().encode([text])[0]
    vectors = {record["id"]: vec}
    for call_id, other in (context.get("known") or {}).items():
        if other.get("embedding") and call_id in corpus:
            vectors[call_id] = np.asarray(other["embedding"], dtype=np.float32)
    clusters = cluster_calls(vectors, {i: corpus[i] for i in vectors})
    return {
        "keywords": keywords_of(text, corpus),
        "cluster": clusters[record["id"]],
        "calls_clustered": len(vectors),
        "embedding": [round(float(v), 5) for v in vec],
    }


# --- cost and QA ---------------------------------------------------------------------------


def cost(record: dict[str, Any], settings: Settings, context: dict[str, Any]) -> Any:
    """The call's cost from its usage and the price table, checked against
    what the bridge wrote at hangup."""
    now = costs(record["usage"], record["duration_s"], settings)
    return {
        "usage": record["usage"],
        "minutes": round(record["duration_s"] / 60, 4),
        "cost": now,
        "matches_record": all(abs(now[k] - record["cost"].get(k, 0.0)) < 1e-6 for k in now),
    }


def qa(record: dict[str, Any], settings: Settings, context: dict[str, Any]) -> Any:
    flags: list[dict[str, Any]] = [
        {"kind": "flagged", "reason": f["reason"]} for f in record.get("review_flags", [])
    ]
    flags += [
        {"kind": "escalation", "reason": f"handed to {t}"} for t in record.get("transfers", [])
    ]
    confidence = (context.get("transcript") or {}).get("asr_confidence")
    if confidence is not None and confidence < settings.qa_min_asr_confidence:
        flags.append({"kind": "low_asr_confidence", "reason": f"confidence {confidence:.2f}"})
    turns = [t for t in record["turns"] if t.get("ended_at")]
    for a, b in zip(turns, turns[1:], strict=False):
        gap = b["started_at"] - a["ended_at"]
        if gap >= settings.qa_long_silence_s:
            flags.append(
                {"kind": "long_silence", "reason": f"{gap:.1f} s before: {b['text'][:40]}"}
            )
    return {"flags": flags, "asr_confidence": confidence, "needs_review": bool(flags)}


ANALYSES = {
    "transcript": transcript,
    "summary": summary,
    "sentiment": sentiment,
    "topics": topics,
    "cost": cost,
    "qa": qa,
}

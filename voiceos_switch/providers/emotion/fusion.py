"""The voice's and the words' evidence made into four scores.

One logistic model per state over the same features (the prosody against
the caller's baseline, and the words). The weights are data: ``weights.json``
beside this module, written by ``bench/emotion.py --fit`` from the
evaluation set that script builds; nothing here is tuned by hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .words import STATES

WEIGHTS = Path(__file__).with_name("weights.json")
#: standardised features are held within this many standard deviations
Z_LIMIT = 3.0

PROSODY_FEATURES = (
    "pitch_st",
    "pitch_range_st",
    "pitch_slope",
    "final_rise",
    "level_db",
    "level_var_db",
    "rate",
    "pause_ratio",
)
WORD_FEATURES = (
    "valence",
    "negative",
    "positive",
    "fillers",
    "repeat",
    "question",
    "short",
    "cue_frustrated",
    "cue_confused",
    "cue_urgent",
    "cue_satisfied",
)
FEATURES = (*PROSODY_FEATURES, *WORD_FEATURES, "arousal", "arousal_negative")


def derived(features: dict[str, float]) -> dict[str, float]:
    """How worked up the voice is (louder, higher, wider than the caller's
    usual), alone and together with negative words: anger is both."""
    arousal = (
        max(0.0, features["level_db"]) / 6
        + max(0.0, features["pitch_st"]) / 4
        + max(0.0, features["pitch_range_st"]) / 4
    )
    arousal = min(3.0, arousal)
    negative = max(0.0, -features["valence"]) + 0.5 * features["cue_frustrated"]
    return {**features, "arousal": arousal, "arousal_negative": arousal * negative}


@dataclass(frozen=True)
class Weights:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    bias: dict[str, float]
    coef: dict[str, tuple[float, ...]]
    thresholds: dict[str, float]
    about: dict[str, Any]

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> Weights:
        data = json.loads(path.read_text())
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Weights:
        features = tuple(data["features"])
        n = len(features)
        states = data["states"]
        missing = [s for s in STATES if s not in states]
        if missing or len(data["mean"]) != n or len(data["scale"]) != n:
            raise ValueError(f"emotion weights do not fit the features (missing: {missing})")
        for s in STATES:
            if len(states[s]["weights"]) != n:
                raise ValueError(f"emotion weights for {s} have the wrong length")
        return cls(
            features=features,
            mean=tuple(float(v) for v in data["mean"]),
            scale=tuple(float(v) or 1.0 for v in data["scale"]),
            bias={s: float(states[s]["bias"]) for s in STATES},
            coef={s: tuple(float(v) for v in states[s]["weights"]) for s in STATES},
            thresholds={s: float(data.get("thresholds", {}).get(s, 0.6)) for s in STATES},
            about=dict(data.get("about", {})),
        )

    def scores(self, features: dict[str, float]) -> dict[str, float]:
        # a feature far outside what the fit saw (clipped audio, a tone)
        # counts as no more than the far edge of it
        z = [
            max(-Z_LIMIT, min(Z_LIMIT, (features.get(name, 0.0) - m) / s))
            for name, m, s in zip(self.features, self.mean, self.scale, strict=True)
        ]
        out = {}
        for state in STATES:
            logit = self.bias[state] + sum(w * v for w, v in zip(self.coef[state], z, strict=True))
            out[state] = 1 / (1 + math.exp(-max(-30.0, min(30.0, logit))))
        return out

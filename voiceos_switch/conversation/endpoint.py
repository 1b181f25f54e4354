"""Endpointing: when has the caller finished their turn?

Silence alone is a blunt rule: "my order number is" followed by a pause is
not a finished turn, while "What time do you open?" is, and a fixed wait long
enough for the first is far too slow for the second. Three cues decide:

- the end-of-turn model's probability, computed on the turn's audio when the
  caller pauses (``providers/turn.py``);
- the transcript of what was said so far: trailing words such as "and",
  "is", "my", "um" mean the caller is not done;
- the silence since the caller's voice stopped, measured in audio time.

A style (``patient``, ``balanced``, ``snappy``) sets how sure the model must
be, the shortest silence before a turn may end, and the longest wait. When
the model is unsure, or has not answered, the silence rule decides.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: words a turn practically never ends on (articles, prepositions that take
#: an object, conjunctions, possessives, fillers); whether anything else
#: ends a turn is the language model's call (``providers/eou.py``)
_TRAILING_INCOMPLETE = re.compile(
    r"\b(and|or|but|because|the|a|an|to|of|for|with|from|my|your|our|their|his|her|"
    r"um+|uh+|er+|erm|hmm+|than|if|whether)\W*$",
    re.I,
)


def looks_unfinished(text: str) -> bool:
    """Does a transcript end where a sentence cannot (a conjunction, an
    article, a filler)?"""
    t = text.strip()
    if not t:
        return False
    if t.endswith(("...", "\u2026", ",", "-")):
        return True
    return bool(_TRAILING_INCOMPLETE.search(t))


def looks_complete(text: str) -> bool:
    """Does a transcript read like a finished utterance?"""
    t = text.strip()
    if not t or looks_unfinished(t):
        return False
    return t[-1] in ".?!" or len(t.split()) >= 3


#: the cues the endpointer weighs, in the order of the fitted weights
FEATURES = [
    "bias",
    "voice model: log-odds of finished",
    "words: log10 end-of-turn probability",
    "words end on a word no turn ends on",
    "two words or fewer",
]

_WEIGHTS_FILE = Path(__file__).with_name("endpoint_weights.json")


def features(turn_p: float | None, text: str, text_p: float | None) -> list[float]:
    """The cues of one pause, as the fitted weights expect them (no bias).
    A cue not (yet) known counts as neutral."""
    voice = 0.0
    if turn_p is not None:
        p = min(max(turn_p, 0.02), 0.98)
        voice = math.log(p / (1 - p))
    unfinished = looks_unfinished(text)
    if text_p is not None and text_p >= 0:
        words = math.log10(text_p + 1e-4)
    else:  # no language model to ask: the trailing word decides
        words = -4.0 if unfinished else -1.0
    return [voice, words, float(unfinished), float(len(text.split()) <= 2)]


@functools.cache
def _weights() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_WEIGHTS_FILE.read_text())
    return data


def finished_probability(turn_p: float | None, text: str, text_p: float | None) -> float:
    """How likely the caller has finished, from all cues (weights fitted by
    ``bench/endpoint.py --fit`` on turns with and without mid-sentence pauses)."""
    w = _weights()["weights"]
    x = [1.0, *features(turn_p, text, text_p)]
    z = sum(a * b for a, b in zip(w, x, strict=True))
    return 1 / (1 + math.exp(-z))


@dataclass(frozen=True)
class TurnStyle:
    """How a style trades speed for the risk of cutting a caller off (ms)."""

    name: str
    #: no turn ends before this much silence, however sure the cues are
    min_silence_ms: int
    #: silence that ends a turn the cues are unsure of
    complete_ms: int
    #: silence that ends a turn that reads unfinished (the longest wait)
    incomplete_ms: int
    #: speech shorter than this is a click or a cough, not a turn
    min_speech_ms: int

    @property
    def finished_p(self) -> float:
        """At or above this the cues say the caller has finished."""
        return float(_weights()["styles"][self.name]["finished_p"])

    @property
    def unfinished_p(self) -> float:
        """At or below this they say the caller is mid-sentence."""
        return float(_weights()["styles"][self.name]["unfinished_p"])


#: the unsure waits cover a caller's usual hesitations: measured pauses in
#: the middle of a sentence run 300-900 ms (``bench/endpoint.py``)
STYLES: dict[str, TurnStyle] = {
    "patient": TurnStyle("patient", 200, 1200, 1800, 200),
    "balanced": TurnStyle("balanced", 100, 950, 1300, 150),
    "snappy": TurnStyle("snappy", 80, 500, 900, 120),
}

#: ``text_p`` while the words' probability is still being computed
PENDING = -1.0


def style(name: str) -> TurnStyle:
    if name not in STYLES:
        raise ValueError(f"unknown conversation style {name!r}; one of {', '.join(STYLES)}")
    return STYLES[name]


@dataclass(frozen=True)
class Decision:
    """``over``: the turn has ended; otherwise ``wait_ms`` is the silence at
    which to decide again (None: when the next cue arrives)."""

    over: bool
    reason: str
    wait_ms: float | None = None
    finished_p: float | None = None


def decide(
    cfg: TurnStyle,
    silence_ms: float,
    turn_p: float | None,
    text: str | None,
    text_p: float | None = None,
) -> Decision:
    """The end-of-turn rule. While the words are being decoded (the reply
    needs them anyway) the turn waits for them, up to the unsure wait; then
    the cues together say finished (the shortest silence ends the turn),
    mid-sentence (the longest wait) or unsure (the wait between)."""
    if text is None or text_p == PENDING:
        return _wait(cfg.complete_ms, silence_ms, "silence", early=True)
    if turn_p is None and text_p is None:
        # no model to ask (none configured, or it failed): silence decides
        if looks_unfinished(text):
            return _wait(cfg.incomplete_ms, silence_ms, "unfinished")
        return _wait(cfg.complete_ms, silence_ms, "silence")
    p = finished_probability(turn_p, text, text_p)
    if p >= cfg.finished_p:
        return _wait(cfg.min_silence_ms, silence_ms, "finished", p=p)
    if p <= cfg.unfinished_p:
        return _wait(cfg.incomplete_ms, silence_ms, "unfinished", p=p)
    return _wait(cfg.complete_ms, silence_ms, "unsure", p=p)


def _wait(
    ms: int, silence_ms: float, reason: str, early: bool = False, p: float | None = None
) -> Decision:
    """Over once ``ms`` of silence have passed; ``early``: a cue still to
    come may decide sooner."""
    if silence_ms >= ms:
        return Decision(True, reason, finished_p=p)
    return Decision(False, reason, None if early else ms, finished_p=p)

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

import re
from dataclasses import dataclass

_TRAILING_INCOMPLETE = re.compile(
    r"\b(and|or|but|so|because|the|a|an|to|of|for|with|my|is|are|was|um+|uh+|er+|erm|like|"
    r"if|that|then|i|i'm|we|you|it's|it|in|on|at|about|what|which|your|our|number|from|"
    r"than|when|where|who|whose|how|can|could|would|will|do|does|did|have|has|please)\W*$",
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


@dataclass(frozen=True)
class TurnStyle:
    """How a style trades speed for the risk of cutting a caller off (ms)."""

    name: str
    #: no turn ends before this much silence, however sure the model is
    min_silence_ms: int
    #: the model's probability at or above which the turn is over
    complete_p: float
    #: at or below this, the caller is taken to be mid-sentence
    incomplete_p: float
    #: silence that ends a turn the model is unsure of, reading complete
    complete_ms: int
    #: silence that ends a turn that reads unfinished (the fallback wait)
    incomplete_ms: int
    #: speech shorter than this is a click or a cough, not a turn
    min_speech_ms: int


STYLES: dict[str, TurnStyle] = {
    "patient": TurnStyle("patient", 250, 0.85, 0.5, 800, 1500, 250),
    "balanced": TurnStyle("balanced", 120, 0.7, 0.35, 550, 1100, 200),
    "snappy": TurnStyle("snappy", 80, 0.55, 0.25, 350, 800, 150),
}


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


def decide(cfg: TurnStyle, silence_ms: float, turn_p: float | None, text: str | None) -> Decision:
    """The end-of-turn rule: the model decides when it is sure, the
    transcript can hold it back, and silence decides the rest."""
    unfinished = text is not None and looks_unfinished(text)
    if turn_p is not None and turn_p >= cfg.complete_p and not unfinished:
        if text is None and silence_ms < cfg.complete_ms:
            # the words are being decoded: the reply needs them anyway, and
            # they can still say the caller is mid-sentence
            return Decision(False, "model", cfg.complete_ms)
        if silence_ms >= cfg.min_silence_ms:
            return Decision(True, "model")
        return Decision(False, "model", cfg.min_silence_ms)
    if unfinished or (turn_p is not None and turn_p <= cfg.incomplete_p):
        wait = cfg.incomplete_ms
        why = "unfinished" if unfinished else "model_incomplete"
    elif turn_p is None and text is None:
        wait = cfg.incomplete_ms  # no cue at all yet
        why = "silence"
    else:
        wait = cfg.complete_ms
        why = "silence"
    if silence_ms >= wait:
        return Decision(True, why)
    return Decision(False, why, wait)

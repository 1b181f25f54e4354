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
    #: no turn ends before this much silence, however sure the cues are
    min_silence_ms: int
    #: the voice model's probability at or above which it says "finished"
    complete_p: float
    #: at or below this, the voice model says "mid-sentence"
    incomplete_p: float
    #: silence that ends a turn the cues are unsure of
    complete_ms: int
    #: silence that ends a turn that reads unfinished (the longest wait)
    incomplete_ms: int
    #: speech shorter than this is a click or a cough, not a turn
    min_speech_ms: int
    #: the words' end-of-turn probability below which they are unfinished
    text_unfinished_p: float = 0.004
    #: ... and at or above which they read finished
    text_complete_p: float = 0.03


STYLES: dict[str, TurnStyle] = {
    "patient": TurnStyle("patient", 250, 0.85, 0.5, 800, 1500, 200, 0.01, 0.1),
    "balanced": TurnStyle("balanced", 120, 0.7, 0.35, 550, 1100, 150, 0.004, 0.03),
    "snappy": TurnStyle("snappy", 80, 0.55, 0.25, 350, 800, 120, 0.002, 0.01),
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


def decide(
    cfg: TurnStyle,
    silence_ms: float,
    turn_p: float | None,
    text: str | None,
    text_p: float | None = None,
) -> Decision:
    """The end-of-turn rule. Words that read unfinished hold the turn open
    for the longest wait; words and voice that both read finished end it
    after the shortest silence; anything in between waits for silence.
    While the words are being decoded (the reply needs them anyway) a
    finished-sounding voice waits for them, up to the unsure wait."""
    pending = text is None or text_p == PENDING
    unfinished = text is not None and (
        looks_unfinished(text) or (text_p is not None and 0 <= text_p < cfg.text_unfinished_p)
    )
    if unfinished:
        return _wait(cfg.incomplete_ms, silence_ms, "unfinished")
    voice_done = turn_p is not None and turn_p >= cfg.complete_p
    words_done = text_p is not None and text_p >= cfg.text_complete_p
    if voice_done and pending:
        return _wait(cfg.complete_ms, silence_ms, "model", early=True)
    if voice_done and (words_done or text_p is None):
        return _wait(cfg.min_silence_ms, silence_ms, "model")
    if turn_p is None and pending:
        return _wait(cfg.incomplete_ms, silence_ms, "silence", early=True)
    if turn_p is not None and turn_p <= cfg.incomplete_p and not words_done:
        return _wait(cfg.incomplete_ms, silence_ms, "model_incomplete")
    return _wait(cfg.complete_ms, silence_ms, "silence")


def _wait(ms: int, silence_ms: float, reason: str, early: bool = False) -> Decision:
    """Over once ``ms`` of silence have passed; ``early``: a cue still to
    come may decide sooner."""
    if silence_ms >= ms:
        return Decision(True, reason)
    return Decision(False, reason, None if early else ms)

"""Endpointing: when has the caller finished their turn?

Silence alone is a blunt rule: "I'd like to order, um," followed by a pause
is not a finished turn, while "What time do you open?" is. The endpointer
combines VAD silence with the transcript of what was said so far: a
complete-looking utterance ends after a short silence, an unfinished one
waits longer. Silence is measured in time, not in frames that say
"silence": a caller whose PBX stops sending frames (DTX) still ends a turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STYLES: dict[str, tuple[int, int, int]] = {
    # style: (silence after a complete utterance, after an unfinished one,
    #         minimum speech to count as a turn), in ms
    "patient": (700, 1400, 250),
    "balanced": (450, 1000, 200),
    "snappy": (250, 700, 150),
}

_TRAILING_INCOMPLETE = re.compile(
    r"\b(and|or|but|so|because|the|a|an|to|of|for|with|my|is|um+|uh+|er+|like|if|that|then|"
    r"i|i'm|we|you|it's|it|in|on|at|about|what|which)\W*$",
    re.I,
)


def looks_complete(text: str) -> bool:
    """Does a transcript read like a finished utterance?"""
    t = text.strip()
    if not t:
        return False
    if t.endswith(("...", "\u2026", ",", "-")):
        return False
    if _TRAILING_INCOMPLETE.search(t):
        return False
    return t[-1] in ".?!" or len(t.split()) >= 3


@dataclass
class EndpointConfig:
    complete_ms: int
    incomplete_ms: int
    min_speech_ms: int

    @classmethod
    def style(cls, name: str) -> EndpointConfig:
        if name not in STYLES:
            raise ValueError(f"unknown conversation style {name!r}; one of {', '.join(STYLES)}")
        return cls(*STYLES[name])


class Endpointer:
    """Fed VAD decisions with their stream time and, when known, the text
    heard so far; says when speech started and when the turn is over."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self.in_speech = False
        self.speech_started_ms: float | None = None
        self.last_speech_ms: float | None = None
        self.speech_ms = 0.0
        self.text = ""

    def reset(self) -> None:
        self.in_speech = False
        self.speech_started_ms = None
        self.last_speech_ms = None
        self.speech_ms = 0.0
        self.text = ""

    def on_vad(self, speech: bool, end_ms: float, window_ms: float) -> bool:
        """Returns True when this window starts a new utterance."""
        if speech:
            started = self.speech_started_ms is None
            if started:
                self.speech_started_ms = end_ms - window_ms
            self.last_speech_ms = end_ms
            self.speech_ms += window_ms
            self.in_speech = True
            return started
        self.in_speech = False
        return False

    def set_text(self, text: str) -> None:
        self.text = text

    @property
    def has_turn(self) -> bool:
        return self.speech_ms >= self.config.min_speech_ms

    def silence_ms(self, now_ms: float) -> float:
        if self.last_speech_ms is None or self.in_speech:
            return 0.0
        return now_ms - self.last_speech_ms

    def required_silence_ms(self) -> int:
        return self.config.complete_ms if looks_complete(self.text) else self.config.incomplete_ms

    def turn_over(self, now_ms: float) -> bool:
        """Has the caller finished? ``now_ms`` is stream time, advancing with
        the wall clock even when no frames arrive."""
        if not self.has_turn or self.in_speech:
            return False
        return self.silence_ms(now_ms) >= self.required_silence_ms()

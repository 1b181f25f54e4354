"""The caller's emotion, offline, per utterance: prosody against the
caller's own baseline, the words, and a fitted fusion of both."""

from .reader import Emotion, EmotionReader, Reading
from .words import CONFUSED, FRUSTRATED, SATISFIED, STATES, URGENT

__all__ = [
    "CONFUSED",
    "FRUSTRATED",
    "SATISFIED",
    "STATES",
    "URGENT",
    "Emotion",
    "EmotionReader",
    "Reading",
]

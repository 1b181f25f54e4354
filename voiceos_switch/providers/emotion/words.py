"""What the caller's words say about how they feel.

Three kinds of evidence, all from one turn's transcript (and the turns
before it):

- valence: VADER (``vaderSentiment``, a lexicon and rules for short,
  informal text; negation and intensifiers included);
- cue phrases per state, as callers say them on the phone ("what do you
  mean", "right now", "third time", "perfect"), negation-aware: "I'm not
  confused" and "it's not urgent" are no cue;
- repetition: the caller asking for the same thing again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

FRUSTRATED = "frustrated"
CONFUSED = "confused"
URGENT = "urgent"
SATISFIED = "satisfied"
STATES = (FRUSTRATED, CONFUSED, URGENT, SATISFIED)

#: a negation in the same clause, a few words before a cue, cancels it
NEGATION = re.compile(
    r"\b(?:don't|do not|doesn't|does not|didn't|isn't|is not|wasn't|not|never|no need|no)\b"
)
_CLAUSES = re.compile(r"[.,;!?]|\bbut\b|\bthough\b")

_CUES: dict[str, list[str]] = {
    FRUSTRATED: [
        # "again" alone is a polite request ("could you check it again")
        r"again and again",
        r"yet again",
        r"not again",
        r"(?:happening|happened|broken|broke|wrong|late|failed|down|missing) again",
        r"keeps? (?:happening|breaking|failing|crashing|dropping)",
        r"(?:second|third|fourth|fifth) time",
        r"(?:how many|so many) times",
        r"ridiculous",
        r"unacceptable",
        r"useless",
        r"pointless",
        r"waste of (?:my )?time",
        r"fed up",
        r"sick (?:and tired )?of",
        r"(?:already|just) (?:told|said|explained|gave)",
        r"still (?:not|hasn't|haven't|isn't|doesn't|no|waiting)",
        r"nobody",
        r"terrible",
        r"awful",
        r"worst",
        r"frustrat\w*",
        r"annoy\w*",
        r"angry",
        r"upset",
        r"come on",
        r"seriously",
        r"enough",
        r"for (?:an hour|hours|days|weeks)",
        r"this is (?:crazy|insane|a joke)",
    ],
    CONFUSED: [
        r"what do you mean",
        r"what does (?:that|this|it) mean",
        r"(?:i )?don't understand",
        r"do not understand",
        r"(?:i )?don't (?:get|follow)",
        r"confus\w*",
        r"not sure (?:what|how|which|if|i)",
        r"sorry,? what",
        r"\bhuh\b",
        r"lost me",
        r"(?:i'm|i am) lost",
        r"(?:can|could) you explain",
        r"explain (?:that|it|again)",
        r"say that again",
        r"makes no sense",
        r"doesn't make (?:any )?sense",
        r"which one",
        r"what's that",
        r"i'm not following",
        r"wait,? what",
    ],
    URGENT: [
        r"right now",
        r"right away",
        r"immediately",
        r"emergency",
        r"urgent\w*",
        r"asap",
        r"as soon as possible",
        r"hurry",
        r"quickly",
        r"as fast as",
        r"can't wait",
        r"cannot wait",
        r"need (?:it|this|help|someone) (?:now|today|tonight)",
        r"by (?:today|tonight|tomorrow morning)",
        r"(?:time|really) (?:is )?(?:running out|critical)",
        r"no time",
    ],
    SATISFIED: [
        r"thank you",
        r"thanks",
        r"perfect",
        r"great",
        r"wonderful",
        r"excellent",
        r"awesome",
        r"fantastic",
        r"appreciate\w*",
        r"(?:that's|that is|very|so|really) helpful",
        r"that helps",
        r"(?:that's|that is|sounds) (?:good|fine|lovely)",
        r"happy with",
        r"glad",
        r"brilliant",
    ],
}
_PATTERNS = {state: re.compile(r"\b(?:" + "|".join(cues) + r")\b") for state, cues in _CUES.items()}
#: a cue no further than this many words after a negation is negated
NEGATION_REACH = 3
FILLERS = re.compile(r"\b(?:um+|uh+|erm+|er|hmm+|mm+)\b")
_WORD = re.compile(r"[a-z']+")
_STOP = frozenset(
    "a an the i me my you your is are was it to of and or for on in at this that "
    "can could would please just so do be".split()
)


def normal(text: str) -> str:
    return re.sub(r"[^a-z' .,;!?-]+", " ", text.lower().replace("’", "'"))


def cues(text: str) -> dict[str, list[str]]:
    """The cue phrases of each state in ``text`` (negated ones left out)."""
    found: dict[str, list[str]] = {state: [] for state in STATES}
    for clause in _CLAUSES.split(normal(text)):
        for state, pattern in _PATTERNS.items():
            for m in pattern.finditer(clause):
                before = clause[: m.start()].split()[-NEGATION_REACH - 1 :]
                if NEGATION.search(" ".join(before)) and not NEGATION.match(m.group(0)):
                    continue  # "not a problem", "I'm not confused"
                found[state].append(m.group(0))
    return found


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(normal(text)) if w not in _STOP and len(w) > 1}


def repetition(text: str, earlier: Sequence[str]) -> float:
    """How much this turn repeats one of the caller's last turns (0..1):
    the overlap of their content words."""
    now = content_words(text)
    if len(now) < 3:
        return 0.0
    best = 0.0
    for before in earlier[-3:]:
        then = content_words(before)
        if len(then) >= 3:
            best = max(best, len(now & then) / len(now | then))
    return best


class _Valence:
    _analyser: Any = None

    @classmethod
    def of(cls, text: str) -> dict[str, float]:
        if cls._analyser is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            cls._analyser = SentimentIntensityAnalyzer()
        scores: dict[str, float] = cls._analyser.polarity_scores(text)
        return scores


def word_features(text: str, earlier: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """The turn's word features (named as the fusion weights name them) and
    the cues found, for the record ("frustrated: third time")."""
    words = _WORD.findall(normal(text))
    n = len(words)
    valence = _Valence.of(text) if n else {"compound": 0.0, "neg": 0.0, "pos": 0.0}
    found = cues(text)
    rep = repetition(text, earlier)
    feats = {
        "valence": float(valence["compound"]),
        "negative": float(valence["neg"]),
        "positive": float(valence["pos"]),
        "fillers": min(1.0, len(FILLERS.findall(normal(text))) / max(1, n) * 5),
        "repeat": rep,
        "question": 1.0 if text.strip().endswith("?") else 0.0,
        "short": 1.0 if n <= 2 else 0.0,
    }
    for state in STATES:
        feats[f"cue_{state}"] = float(min(2, len(found[state])))
    notes = [f"{state}: {', '.join(found[state])}" for state in STATES if found[state]]
    if rep >= 0.5:
        notes.append(f"repeated ({rep:.2f})")
    return feats, notes

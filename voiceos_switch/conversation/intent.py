"""What the caller wants done with the call, from their words.

Spoken requests are short and loosely worded ("can I talk to a person",
"representative", "just get me a human"), so they are matched as phrases a
caller says, clause by clause, with negation taken into account ("I don't
need to talk to anyone" asks for nothing). Only the caller's own words of
one turn are read.
"""

from __future__ import annotations

import re

ESCALATE = "escalate"
CANCEL = "cancel"
COMPLAINT = "complaint"
GOODBYE = "goodbye"

_WHO = (
    r"(?:a |an |the |some |your |to a |to an |to the )?(?:real |live |actual |human )?"
    r"(?:person|human|human being|agent|representative|rep|operator|someone|somebody|"
    r"anyone|anybody|manager|supervisor|customer service)"
)
_INTENTS: list[tuple[str, re.Pattern[str]]] = [
    (
        ESCALATE,
        re.compile(
            rf"\b(?:talk|speak|chat)\s+(?:to|with)\s+{_WHO}\b"
            rf"|\b(?:transfer|connect|put)\s+me\s+(?:through\s+)?(?:to|with)\s+{_WHO}\b"
            rf"|\b(?:get|give|find)\s+me\s+{_WHO}\b"
            rf"|\b(?:want|need)\s+{_WHO}\b"
        ),
    ),
    (CANCEL, re.compile(r"\bcancel\b|\bcall (?:it|that) off\b|\bforget (?:it|about it)\b")),
    (
        COMPLAINT,
        re.compile(r"\b(?:complain|complaint|unacceptable|ridiculous|worst service)\b"),
    ),
    (
        GOODBYE,
        re.compile(r"\b(?:goodbye|good bye|bye(?: bye)?|that's all|that is all|hang up)\b"),
    ),
]
#: a turn of a word or two that is nothing but the request
_BARE_ESCALATION = re.compile(
    r"^(?:an? |the )?(?:real |live )?(?:representative|operator|human|agent|person)"
    r"(?: please)?$"
)
_NEGATION = re.compile(r"\b(?:don't|do not|doesn't|does not|didn't|no need|not|never|without|no)\b")
_CLAUSES = re.compile(r"[.,;!?]|\bbut\b")


def _normal(text: str) -> str:
    text = text.lower().replace("’", "'")
    return re.sub(r"[^a-z' .,;!?-]+", " ", text)


def intent_of(text: str) -> str | None:
    """The first request the caller's words make, or None: ``escalate``
    (a person), ``cancel``, ``complaint`` or ``goodbye``."""
    normal = _normal(text)
    bare = re.sub(r"[^a-z' ]+", " ", normal).split()
    if _BARE_ESCALATION.match(" ".join(bare)):
        return ESCALATE
    for clause in _CLAUSES.split(normal):
        for kind, pattern in _INTENTS:
            m = pattern.search(clause)
            if m is None:
                continue
            if _NEGATION.search(clause[: m.start()]) and kind in (ESCALATE, CANCEL):
                continue  # "I don't need to talk to anyone"
            return kind
    return None

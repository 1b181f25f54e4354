"""Facts as data: the agent's answers come from them, not from the model's memory.

A phone agent must get its opening hours right. Facts are given to the
agent as data, either plain statements written to be said aloud ("We are
open nine to six, Monday to Saturday.") or question-and-answer pairs. The
caller's words are matched to them by meaning (MiniLM sentence embeddings,
run in numpy) with a small boost for shared words, and the best match is
either spoken as the answer or given to the model as the one line it needs.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..providers.workers import model_executor

_STOP = frozenset(
    "a an the to of for and or is are was be my your our me you i we it this that what when "
    "where how can could would will do does did please on in at by with from about up us "
    "there here have has any some".split()
)

FactsArg = Sequence[str] | Mapping[str, str]


@dataclass(frozen=True)
class Fact:
    """``matches`` are what the caller's words are compared with (the
    statement itself, or the questions it answers and the answer); ``answer``
    is what the agent says."""

    matches: tuple[str, ...]
    answer: str


@dataclass(frozen=True)
class Match:
    fact: Fact
    score: float
    #: how far ahead of the next best fact it is
    margin: float


def facts_from(value: FactsArg | None) -> list[Fact]:
    """Facts from what the SDK takes: sentences to say, or a mapping from the
    questions a fact answers ("When are you open? What are your hours?",
    several in one key) to its answer."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        by_answer: dict[str, list[str]] = {}
        for questions, answer in value.items():
            if not isinstance(answer, str) or not answer.strip():
                raise ValueError(f"the answer to {questions!r} must be a sentence")
            asked = [q.strip() + "?" for q in str(questions).split("?") if q.strip()]
            by_answer.setdefault(answer.strip(), []).extend(asked)
        return [Fact((*qs, a), a) for a, qs in by_answer.items()]
    out = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("facts must be sentences (str) or a mapping of question to answer")
        out.append(Fact((item.strip(),), item.strip()))
    return out


def _words(text: str) -> set[str]:
    out = set()
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in _STOP or len(w) < 3:
            continue
        out.add(w[:-1] if w.endswith("s") and len(w) > 3 else w)
    return out


Encoder = Callable[[list[str]], np.ndarray]


class Knowledge:
    """The facts of one agent, embedded once; :meth:`best` matches a question."""

    _executor: ThreadPoolExecutor | None = None
    _lock = threading.Lock()

    def __init__(
        self, facts: list[Fact], encoder: Encoder | None = None, word_weight: float = 0.08
    ) -> None:
        self.facts = facts
        self._encoder = encoder
        self._vectors: np.ndarray | None = None
        #: which fact each compared text belongs to
        self._owner = [i for i, f in enumerate(facts) for _ in f.matches]
        self._words = [set().union(*(_words(m) for m in f.matches)) for f in facts]
        self.word_weight = word_weight

    def __bool__(self) -> bool:
        return bool(self.facts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            from ..providers.embed import MiniLM

            self._encoder = MiniLM.shared().encode
        return self._encoder(texts)

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        with cls._lock:
            if cls._executor is None:
                cls._executor = model_executor("embed")
            return cls._executor

    def load_blocking(self) -> None:
        if self._vectors is None and self.facts:
            self._vectors = self._encode([m for f in self.facts for m in f.matches])

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor(), self.load_blocking)

    def best_blocking(self, text: str) -> Match | None:
        if not self.facts or not text.strip():
            return None
        self.load_blocking()
        assert self._vectors is not None
        query = self._encode([text])[0]
        said = _words(text)
        each = self._vectors @ query
        scores = np.full(len(self.facts), -1.0)
        for k, owner in enumerate(self._owner):
            scores[owner] = max(scores[owner], float(each[k]))
        scores = scores + self.word_weight * np.array(
            [min(2, len(said & w)) for w in self._words], dtype=np.float64
        )
        order = np.argsort(-scores)
        top = float(scores[order[0]])
        second = float(scores[order[1]]) if len(order) > 1 else 0.0
        return Match(self.facts[int(order[0])], top, top - second)

    async def best(self, text: str) -> Match | None:
        """The fact closest in meaning to ``text`` (off the event loop)."""
        if not self.facts:
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor(), self.best_blocking, text)


#: words whose value a reply must not invent: if a reply from a small model
#: says one of these and no fact, tool result or caller said it, the reply
#: is not grounded
_SPECIFIC = re.compile(
    r"\b(\d+([:.,]\d+)?|zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|"
    r"twelve|thirteen|fourteen|fifteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|"
    r"ninety|hundred|thousand|monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
    r"noon|midnight|am|pm|a\.m|p\.m|o'clock|dollars?|cents?|percent|january|february|"
    r"march|april|may|june|july|august|september|october|november|december)\b",
    re.I,
)


def ungrounded(reply: str, sources: Sequence[str]) -> list[str]:
    """The specific words (numbers, times, days, prices) of ``reply`` that
    appear in none of ``sources``."""
    known = {m.group(0).lower() for s in sources for m in _SPECIFIC.finditer(s)}
    return [m.group(0) for m in _SPECIFIC.finditer(reply) if m.group(0).lower() not in known]

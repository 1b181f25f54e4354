"""LLM tokens -> speakable chunks, so TTS starts on the first clause.

A chunk ends at a sentence end, or at a clause break (comma, semicolon,
colon, dash) once it is long enough to be worth synthesising on its own.
Markup that reads badly aloud is removed on the way.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"([.!?]+[\"')\]]*)(\s+|$)")
_CLAUSE_END = re.compile(r"([,;:]|\s[-\u2013\u2014])(\s+)")
_MARKUP = re.compile(r"(\*\*|__|`+|^#+\s*|^\s*[-*]\s+|\[(.*?)\]\((.*?)\))", re.M)
_ABBREVIATIONS = ("mr.", "mrs.", "ms.", "dr.", "st.", "e.g.", "i.e.", "etc.", "vs.", "no.")


def speakable(text: str) -> str:
    """Strip markdown emphasis, headings, bullets and link targets."""

    def sub(m: re.Match[str]) -> str:
        return m.group(2) if m.group(2) is not None else ""

    return _MARKUP.sub(sub, text)


class SentenceChunker:
    def __init__(self, first_min_chars: int = 4, min_chars: int = 40, max_chars: int = 220) -> None:
        self._buf = ""
        self._first = True
        self.first_min_chars = first_min_chars
        self.min_chars = min_chars
        self.max_chars = max_chars

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            chunk = self._take()
            if chunk is None:
                return out
            out.append(chunk)

    def flush(self) -> list[str]:
        rest = speakable(self._buf).strip()
        self._buf = ""
        return [rest] if rest else []

    def _take(self) -> str | None:
        buf = self._buf
        for m in _SENTENCE_END.finditer(buf):
            candidate = buf[: m.end(1)]
            if candidate.lower().rstrip().endswith(_ABBREVIATIONS):
                continue
            if re.search(r"\d\.$", candidate) and m.end() == len(buf):
                continue  # "3." may be "3.5" still arriving
            if m.end() == len(buf) and not m.group(2):
                return None  # the punctuation may continue ("...", "?!")
            return self._cut(m.end())
        limit = self.first_min_chars if self._first else self.min_chars
        for m in _CLAUSE_END.finditer(buf):
            if m.start() >= limit:
                return self._cut(m.end())
        if len(buf) > self.max_chars:
            space = buf.rfind(" ", 0, self.max_chars)
            return self._cut(space + 1 if space > 0 else self.max_chars)
        return None

    def _cut(self, end: int) -> str | None:
        chunk, self._buf = self._buf[:end], self._buf[end:]
        self._first = False
        text = speakable(chunk).strip()
        return text or self._take()

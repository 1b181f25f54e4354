"""Audio of the agent's fixed lines, rendered once.

Facts are spoken as written, and so are the greeting, the reprompt and the
goodbye: their audio need not be synthesised on the caller's time. A slow
neural voice (piper: 100-300 ms for a clause on two busy cores) otherwise
sits between the end of the caller's turn and the first word of a fact.
The cache holds each clause's audio per voice and rate, renders the
agent's facts when the models load, and keeps any other fixed line after
its first use. Bounded: the least recently used lines go first.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from ..call import TTS
from .chunker import SentenceChunker


def clauses(text: str) -> list[str]:
    """The pieces a fixed line is spoken in (as the engine cuts them)."""
    chunker = SentenceChunker()
    return chunker.feed(text + " ") + chunker.flush()


class SpeechCache:
    def __init__(self, max_lines: int = 512, max_bytes: int = 64 << 20) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._lines: collections.OrderedDict[tuple[str, str, int], bytes] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self.hits = 0

    def get(self, tts: TTS, text: str, rate: int) -> bytes | None:
        key = (getattr(tts, "name", type(tts).__name__), text, rate)
        pcm = self._lines.get(key)
        if pcm is not None:
            self._lines.move_to_end(key)
            self.hits += 1
        return pcm

    def put(self, tts: TTS, text: str, rate: int, pcm: bytes) -> None:
        key = (getattr(tts, "name", type(tts).__name__), text, rate)
        if key in self._lines or not pcm or len(pcm) > self.max_bytes // 4:
            return
        self._lines[key] = pcm
        self._bytes += len(pcm)
        while len(self._lines) > self.max_lines or self._bytes > self.max_bytes:
            _, old = self._lines.popitem(last=False)
            self._bytes -= len(old)

    async def render(self, tts: TTS, lines: Iterable[str], rate: int) -> int:
        """Render ``lines`` now (the agent's facts, when its models load);
        returns how many clauses were rendered."""
        done = 0
        for line in lines:
            for clause in clauses(line):
                if self.get(tts, clause, rate) is not None:
                    continue
                pcm = bytearray()
                async for part in tts.stream(clause, rate):
                    pcm += part
                self.put(tts, clause, rate, bytes(pcm))
                done += 1
        return done

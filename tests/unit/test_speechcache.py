"""Fixed lines are rendered once: the second time a fact is spoken, its
audio is ready at once and the voice is not asked again."""

from __future__ import annotations

from collections.abc import AsyncIterator

from voiceos_switch.conversation.speechcache import SpeechCache, clauses


class CountingTTS:
    name = "counting"

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        self.asked.append(text)
        for word in text.split():
            yield word.encode() * 10


async def test_rendered_lines_are_not_synthesised_again() -> None:
    tts, cache = CountingTTS(), SpeechCache()
    fact = "We are open nine to six, Monday to Saturday. We are closed on Sundays."
    assert await cache.render(tts, [fact], 8000) == len(clauses(fact)) == 2
    assert await cache.render(tts, [fact], 8000) == 0  # already there
    for clause in clauses(fact):
        pcm = cache.get(tts, clause, 8000)
        assert pcm == b"".join(w.encode() * 10 for w in clause.split())
    assert cache.get(tts, clauses(fact)[0], 16000) is None  # another rate, another line
    assert len(tts.asked) == 2


def test_the_cache_is_bounded() -> None:
    tts, cache = CountingTTS(), SpeechCache(max_lines=3)
    for i in range(10):
        cache.put(tts, f"line {i}", 8000, b"x" * 100)
    assert [cache.get(tts, f"line {i}", 8000) is not None for i in range(10)] == [False] * 7 + [
        True
    ] * 3

"""Is the caller done, by their words: the end-of-turn probability of a transcript.

A language model that has read many conversations knows that "my order
number is" does not end a message and "my order number is four two seven"
may. Fed the caller's words as the start of a user message, the embedded
SmolLM2 gives the probability that the message ends there (its
end-of-message token, or a full stop or question mark next). On phone
audio this reads unfinished sentences far better than a turn model that
hears only the voice (which the phone band confuses); the two are combined
by the endpointer (``conversation/endpoint.py``).

One small llama.cpp context of its own, with the fixed start of the prompt
evaluated once, so each check evaluates only the transcript's tokens; it runs
on the local model's thread, so it never competes with a reply for the cores.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .llm import LocalLLM, _evaluate, default_gguf

PREFIX = (
    "<|im_start|>system\nYou are a phone agent. A caller is speaking to you.<|im_end|>\n"
    "<|im_start|>user\n"
)


class TranscriptTurn:
    """``await probability("my order number is")`` -> about 0.0."""

    name = "transcript-eou"

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        self.model_path = model_path or default_gguf()
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()
        self._ends: list[int] = []

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from .llm import load_llama

                model = load_llama(
                    model_path=str(self.model_path),
                    n_ctx=256,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                )
                ends = {model.token_eos()}
                for mark in (".", "?", "!"):
                    ends.update(model.tokenize(mark.encode(), add_bos=False, special=False))
                self._ends = sorted(ends)
                _evaluate(model, PREFIX)
                self._model = model
            return self._model

    def load_blocking(self) -> None:
        self.probability_blocking("hello")

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(LocalLLM.executor(), self.load_blocking)

    def probability_blocking(self, text: str) -> float:
        words = re.sub(r"[.?!\s]+$", "", text.strip())
        if not words:
            return 0.0
        model = self._load()
        prompt = PREFIX + words[:300]
        _evaluate(model, prompt)
        ptr = model._ctx.get_logits_ith(-1)
        logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab(),)).astype(np.float64)
        logits -= logits.max()
        probs = np.exp(logits)
        return float(probs[self._ends].sum() / probs.sum())

    async def probability(self, text: str) -> float:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(LocalLLM.executor(), self.probability_blocking, text)

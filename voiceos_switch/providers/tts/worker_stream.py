"""Streaming synthesis from a worker thread back to the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

from ...audio.pcm import StreamResampler

Push = Callable[[int, bytes], None]


class TTSError(RuntimeError):
    pass


async def stream_from_worker(
    executor: Executor,
    produce: Callable[[Push, threading.Event], None],
    sample_rate: int,
    what: str,
) -> AsyncIterator[bytes]:
    """Run ``produce(push, cancel)`` on ``executor``; each ``push(rate, pcm)``
    comes back here resampled to ``sample_rate`` as soon as it is made.
    Leaving early sets ``cancel`` and waits for the worker to notice."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, bytes] | BaseException | None] = asyncio.Queue()
    cancel = threading.Event()

    def push(rate: int, pcm: bytes) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (rate, pcm))

    def run() -> None:
        try:
            produce(push, cancel)
        except BaseException as exc:  # surfaced on the loop side
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    future = loop.run_in_executor(executor, run)
    resampler: StreamResampler | None = None
    try:
        while True:
            item = await queue.get()
            if item is None:
                tail = resampler.process(b"", last=True) if resampler is not None else b""
                if tail:
                    yield tail
                return
            if isinstance(item, BaseException):
                raise TTSError(f"{what} failed: {item}") from item
            rate, pcm = item
            if resampler is None:
                resampler = StreamResampler(rate, sample_rate)
            out = resampler.process(pcm)
            if out:
                yield out
    finally:
        cancel.set()
        await asyncio.shield(future)

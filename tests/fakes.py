"""Test doubles for providers and media; the real ones are tested on their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from voiceos_switch.audio.pacer import FrameClock, Pacer, Playout
from voiceos_switch.media import MediaEnded, MediaEvent
from voiceos_switch.transports.inbox import Inbox, InboxMedia


class FakeTTS:
    """100 ms of audio per word, streamed word by word."""

    name = "fake"

    async def stream(self, text: str, sample_rate: int) -> AsyncIterator[bytes]:
        for _ in text.split():
            await asyncio.sleep(0)
            yield b"\x10\x00" * (sample_rate // 10)


class FakeMedia(InboxMedia):
    """A call media whose caller is the test: it puts what the caller sends
    with ``put`` and reads what the agent sent in ``sent``."""

    pbx = "test"

    def __init__(self, clock: FrameClock, rate: int = 8000) -> None:
        self.call_id = "call-1"
        self.sample_rate = rate
        self.clock = clock
        self.sent: list[bytes] = []
        self.sent_at: list[float] = []
        self.pacer = Pacer(rate, self._write)
        clock.add(self.pacer)
        self._inbox = Inbox()
        self._ended: MediaEnded | None = None
        self.hung_up = False

    def _write(self, pcm: bytes) -> None:
        self.sent.append(pcm)
        self.sent_at.append(self.clock.clock.now())

    def put(self, event: MediaEvent) -> None:
        self._inbox.put(event)

    def send_audio(self, pcm: bytes) -> Playout:
        return self.pacer.enqueue(pcm)

    def clear(self) -> int:
        return self.pacer.clear()

    def monitor_output(self, callback: Any) -> None:
        self.pacer.monitor = callback

    def pause_output(self) -> None:
        self.pacer.pause()

    def resume_output(self) -> None:
        self.pacer.resume()

    async def hangup(self) -> None:
        self.hung_up = True
        self.end("agent hung up")

    async def finish_playing(self, timeout: float = 30.0) -> None:
        return None  # what the fake sends is "heard" when sent

    def end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = MediaEnded(reason)
            self.pacer.clear()
            self._inbox.put(self._ended)

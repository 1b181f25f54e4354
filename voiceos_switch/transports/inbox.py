"""What every transport's call media shares: a bounded inbound queue and the
event stream the agent reads from it."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from .. import log
from ..audio.pacer import Playout
from ..media import AudioIn, MediaEnded, MediaEvent

logger = log.get("voiceos_switch.transports")

#: Inbound audio held for a consumer that falls behind (30 s); older frames drop.
MAX_INBOUND_FRAMES = 1500


class Inbox:
    """A bounded event queue: audio beyond the bound drops oldest-first."""

    def __init__(self) -> None:
        self._items: collections.deque[MediaEvent] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._audio = 0
        self.dropped = 0
        self.closed = False

    def put(self, event: MediaEvent) -> None:
        if self.closed:
            return
        if isinstance(event, AudioIn):
            if self._audio >= MAX_INBOUND_FRAMES:
                self._drop_oldest_audio()
            self._audio += 1
        elif isinstance(event, MediaEnded):
            self.closed = True
        self._items.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _drop_oldest_audio(self) -> None:
        for i, item in enumerate(self._items):
            if isinstance(item, AudioIn):
                del self._items[i]
                self._audio -= 1
                self.dropped += 1
                return

    async def get(self) -> MediaEvent:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = self._items.popleft()
        if isinstance(item, AudioIn):
            self._audio -= 1
        return item


class InboxMedia:
    """``events()``, ``ended`` and ``end_reason`` for a call media whose
    transport fills ``self._inbox`` and sets ``self._ended``."""

    _inbox: Inbox
    _ended: MediaEnded | None

    async def events(self) -> AsyncIterator[MediaEvent]:
        while True:
            event = await self._inbox.get()
            yield event
            if isinstance(event, MediaEnded):
                return

    @property
    def ended(self) -> bool:
        return self._ended is not None

    @property
    def end_reason(self) -> MediaEnded | None:
        return self._ended


async def run_agent(on_call: Callable[[Any], Awaitable[None]], call: Any) -> None:
    """Run the agent's loop for one call: its errors are logged with the call
    id and end that call only; a call the agent leaves up is hung up."""
    log.call_id_var.set(call.call_id)
    try:
        await on_call(call)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception(log.kv(event="agent_error"))
    finally:
        if not call.ended:
            await call.hangup()


def silent_playout() -> Playout:
    """What sending audio on an ended call returns: nothing played."""
    playout = Playout(frames=0)
    playout.done.set_result(False)
    return playout


class CallRecording(Protocol):
    """Both legs of one call as the bridge saw them."""

    def inbound(self, pcm: bytes) -> None: ...

    def outbound(self, pcm: bytes) -> None: ...

    def close(self) -> None: ...

"""The live events a dashboard shows, with ids a reconnecting viewer resumes from.

Two sources, one shape (``read(after, timeout)`` gives ``(id, event)``
pairs after an id):

- :class:`LiveFeed`: the bridge's own calls, subscribed to every call's
  bus (the dashboard served by the bridge, no Redis needed). Ids count up
  from 1 for the life of the process.
- :class:`StreamFeed`: every bridge's calls, from the Redis Stream the
  bridges append to (ids are the stream's entry ids). One task reads the
  stream for all viewers; a viewer further behind than what is kept here is
  served from the stream itself, so nothing the stream still holds is missed.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
from typing import Any

from .. import events as ev
from .. import log
from ..eventstream import STREAM

logger = log.get(__name__)

#: events kept in memory for viewers that (re)connect
KEEP = 20000
#: the stream unreadable: tried again this often
RETRY_S = 1.0


def _order(entry_id: str) -> tuple[int, int]:
    head, _, tail = entry_id.partition("-")
    try:
        return int(head), int(tail or 0)
    except ValueError:
        return (-1, -1)


#: one kept event: its order, its id, its JSON text (serialised once, for every viewer)
_Entry = tuple[tuple[int, int], str, str]


class _Ring:
    """The last events with their ids, oldest first, and a wake-up for viewers
    waiting on new ones. Finding where a viewer is costs a binary search,
    and what it is sent costs only what is new to it."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._items: list[_Entry] = []
        self._new = asyncio.Event()
        self.closed = False

    def add(self, entry_id: str, text: str) -> None:
        self._items.append((_order(entry_id), entry_id, text))
        if len(self._items) >= 2 * self.keep:  # trimmed in halves: appends stay cheap
            del self._items[: len(self._items) - self.keep]
        self.wake()

    @property
    def entries(self) -> list[tuple[str, str]]:
        """What is kept (at most ``keep``), as (id, JSON text)."""
        return [(i, t) for _, i, t in self._items[-self.keep :]]

    def wake(self) -> None:
        """Viewers waiting look again (something new, or the source's state changed)."""
        self._new.set()
        self._new = asyncio.Event()

    def after(self, entry_id: str | None) -> list[tuple[str, str]] | None:
        """What came after ``entry_id`` (None: the id is older than what is kept)."""
        if entry_id is None:
            return self.entries
        key = _order(entry_id)
        first = max(0, len(self._items) - self.keep)
        if first < len(self._items) and key < self._items[first][0]:
            return None
        at = bisect.bisect_right(self._items, key, lo=first, key=lambda e: e[0])
        return [(i, t) for _, i, t in self._items[at:]]

    async def wait_after(self, entry_id: str | None, timeout: float) -> list[tuple[str, str]]:
        """What comes after ``entry_id`` within ``timeout`` (nothing: [])."""
        if not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), timeout)
        return self.after(entry_id) or []

    def close(self) -> None:
        """Viewers waiting are let go (their streams end)."""
        self.closed = True
        self._new.set()


class _Feed:
    source = "?"
    #: why the live source cannot be read (None: it can)
    error: str | None = None

    def __init__(self, keep: int) -> None:
        self._ring = _Ring(keep)

    @property
    def closed(self) -> bool:
        return self._ring.closed

    async def read_text(self, after: str | None, timeout: float = 15.0) -> list[tuple[str, str]]:
        """Events after ``after`` as (id, JSON text), waiting up to ``timeout``
        for one when there is none yet."""
        raise NotImplementedError

    async def read(
        self, after: str | None, timeout: float = 15.0
    ) -> list[tuple[str, dict[str, Any]]]:
        """The same, decoded."""
        return [(i, json.loads(t)) for i, t in await self.read_text(after, timeout)]


class LiveFeed(_Feed):
    """The bridge's own events: add :meth:`publish` to the agent's subscribers."""

    source = "bridge"

    def __init__(self, keep: int = KEEP) -> None:
        super().__init__(keep)
        self._seq = 0

    def publish(self, event: ev.Event) -> None:
        self._seq += 1
        self._ring.add(str(self._seq), json.dumps(ev.as_dict(event), default=str))

    async def read_text(self, after: str | None, timeout: float = 15.0) -> list[tuple[str, str]]:
        got = self._ring.after(after)
        if got is None:  # older than anything kept: all there is
            return self._ring.entries
        return got or await self._ring.wait_after(after, timeout)

    async def close(self) -> None:
        self._ring.close()


class StreamFeed(_Feed):
    """Every bridge's events, from the Redis Stream."""

    source = "redis"

    def __init__(self, url: str, stream: str = STREAM, keep: int = KEEP) -> None:
        import redis.asyncio as aioredis

        super().__init__(keep)
        self.url = url
        self.stream = stream
        self._keep = keep
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name="event-stream-reader")

    @staticmethod
    def _decode(entries: Any) -> list[tuple[str, str]]:
        out = []
        for entry_id, fields in entries or []:
            key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            raw = fields.get(b"event") or fields.get("event")
            if isinstance(raw, bytes):
                raw = raw.decode(errors="replace")
            if isinstance(raw, str) and raw.startswith("{"):
                out.append((key, raw))  # not one of ours: left out
        return out

    async def _pump(self) -> None:
        last: str | None = None
        while True:
            try:
                if last is None:  # what the stream holds already, newest kept here
                    recent = self._decode(
                        await self._redis.xrevrange(self.stream, count=self._keep)
                    )
                    for key, text in reversed(recent):
                        self._ring.add(key, text)
                    last = str(recent[0][0]) if recent else "0-0"
                if self.error is not None:  # back: say so before waiting on news
                    await self._redis.ping()
                    logger.info(log.kv(event="dashboard_stream_up", url=self.url))
                    self.error = None
                    self._ring.wake()
                got: Any = await self._redis.xread({self.stream: last}, count=500, block=5000)
                for _name, entries in got or []:
                    for key, text in self._decode(entries):
                        self._ring.add(key, text)
                        last = key
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away: retry, say so once
                if self.error is None:
                    logger.warning(
                        log.kv(event="dashboard_stream_down", url=self.url, error=repr(exc))
                    )
                was = self.error
                self.error = f"the event stream at {self.url} cannot be read: {exc}"
                if was is None:
                    self._ring.wake()
                await asyncio.sleep(RETRY_S)

    async def read_text(self, after: str | None, timeout: float = 15.0) -> list[tuple[str, str]]:
        self.start()
        got = self._ring.after(after)
        if got is None and after is not None:  # further back than kept here
            try:
                older = self._decode(
                    await self._redis.xrange(self.stream, min=f"({after}", count=self._keep)
                )
            except Exception:  # noqa: BLE001 - then what is kept here
                older = []
            return older or self._ring.entries
        return got or await self._ring.wait_after(after, timeout)

    async def close(self) -> None:
        self._ring.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

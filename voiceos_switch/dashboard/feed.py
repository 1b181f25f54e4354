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
import collections
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


class _Ring:
    """The last events with their ids, and a wake-up for viewers waiting on new ones."""

    def __init__(self, keep: int = KEEP) -> None:
        self.entries: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=keep)
        self._new = asyncio.Event()
        self.closed = False

    def add(self, entry_id: str, event: dict[str, Any]) -> None:
        self.entries.append((entry_id, event))
        self.wake()

    def wake(self) -> None:
        """Viewers waiting look again (something new, or the source's state changed)."""
        self._new.set()
        self._new = asyncio.Event()

    def after(self, entry_id: str | None) -> list[tuple[str, dict[str, Any]]] | None:
        """What came after ``entry_id`` (None: the id is older than what is kept)."""
        if entry_id is None:
            return list(self.entries)
        key = _order(entry_id)
        if self.entries and key < _order(self.entries[0][0]):
            return None
        return [(i, e) for i, e in self.entries if _order(i) > key]

    async def wait_after(
        self, entry_id: str | None, timeout: float
    ) -> list[tuple[str, dict[str, Any]]]:
        """What comes after ``entry_id`` within ``timeout`` (nothing: [])."""
        if not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), timeout)
        return self.after(entry_id) or []

    def close(self) -> None:
        """Viewers waiting are let go (their streams end)."""
        self.closed = True
        self._new.set()


class LiveFeed:
    """The bridge's own events: add :meth:`publish` to the agent's subscribers."""

    source = "bridge"

    def __init__(self, keep: int = KEEP) -> None:
        self._ring = _Ring(keep)
        self._seq = 0

    @property
    def closed(self) -> bool:
        return self._ring.closed

    def publish(self, event: ev.Event) -> None:
        self._seq += 1
        self._ring.add(str(self._seq), json.loads(json.dumps(ev.as_dict(event), default=str)))

    async def read(
        self, after: str | None, timeout: float = 15.0
    ) -> list[tuple[str, dict[str, Any]]]:
        got = self._ring.after(after)
        if got is None:  # older than anything kept: all there is
            return list(self._ring.entries)
        return got or await self._ring.wait_after(after, timeout)

    async def close(self) -> None:
        self._ring.close()


class StreamFeed:
    """Every bridge's events, from the Redis Stream."""

    source = "redis"

    def __init__(self, url: str, stream: str = STREAM, keep: int = KEEP) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.stream = stream
        self._keep = keep
        self._ring = _Ring(keep)
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0)
        self._task: asyncio.Task[None] | None = None
        #: the last error reading the stream (None while it reads)
        self.error: str | None = None

    @property
    def closed(self) -> bool:
        return self._ring.closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name="event-stream-reader")

    @staticmethod
    def _decode(entries: Any) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for entry_id, fields in entries or []:
            key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            raw = fields.get(b"event") or fields.get("event")
            try:
                out.append((key, json.loads(raw)))
            except (TypeError, ValueError):
                continue  # not one of ours
        return out

    async def _pump(self) -> None:
        last: str | None = None
        while True:
            try:
                if last is None:  # what the stream holds already, newest kept here
                    recent = self._decode(
                        await self._redis.xrevrange(self.stream, count=self._keep)
                    )
                    for key, event in reversed(recent):
                        self._ring.add(key, event)
                    last = str(recent[0][0]) if recent else "0-0"
                if self.error is not None:  # back: say so before waiting on news
                    await self._redis.ping()
                    logger.info(log.kv(event="dashboard_stream_up", url=self.url))
                    self.error = None
                    self._ring.wake()
                got: Any = await self._redis.xread({self.stream: last}, count=500, block=5000)
                for _name, entries in got or []:
                    for key, event in self._decode(entries):
                        self._ring.add(key, event)
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

    async def read(
        self, after: str | None, timeout: float = 15.0
    ) -> list[tuple[str, dict[str, Any]]]:
        self.start()
        got = self._ring.after(after)
        if got is None and after is not None:  # further back than kept here
            try:
                older = self._decode(
                    await self._redis.xrange(self.stream, min=f"({after}", count=self._keep)
                )
            except Exception:  # noqa: BLE001 - then what is kept here
                older = []
            return older or list(self._ring.entries)
        return got or await self._ring.wait_after(after, timeout)

    async def close(self) -> None:
        self._ring.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

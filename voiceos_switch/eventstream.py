"""Every call's events, across bridge processes: a Redis Stream.

Each bridge appends its calls' events (``events.as_dict``, with the
bridge's name) to one stream with ``XADD ... MAXLEN ~``, so several bridges
feed one viewer, and a viewer that reconnects reads on from the last entry
it saw (:func:`read_events`). It is one more subscriber of each call's bus:
a Redis that is slow or down costs the call nothing. While Redis is down
the events are counted as lost (the call's durable record still has them)
and one line is logged when it goes and one when it is back; attempts are
spaced so a dead Redis is not waited on for every event.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import Any

from . import events as ev
from . import log

logger = log.get(__name__)

STREAM = "voiceos:events"
#: entries kept (approximately): a few hours of a busy bridge
MAXLEN = 100_000
#: the longest one append may take
TIMEOUT_S = 1.0
#: after a failure, appends are skipped this long before the next try
RETRY_S = 2.0


def bridge_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class EventStream:
    def __init__(
        self, url: str, stream: str = STREAM, maxlen: int = MAXLEN, bridge: str | None = None
    ) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.bridge = bridge or bridge_name()
        self._redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
        )
        self.up = True
        self._retry_at = 0.0
        self.appended = 0
        self.lost = 0

    async def publish(self, event: ev.Event) -> None:
        """The subscriber: one event onto the stream (or counted as lost)."""
        if not self.up and time.monotonic() < self._retry_at:
            self.lost += 1
            return
        entry = json.dumps({**ev.as_dict(event), "bridge": self.bridge}, default=str)
        try:
            await asyncio.wait_for(
                self._redis.xadd(
                    self.stream, {"event": entry}, maxlen=self.maxlen, approximate=True
                ),
                TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 - Redis down costs the call nothing
            self.lost += 1
            self._retry_at = time.monotonic() + RETRY_S
            if self.up:
                self.up = False
                logger.warning(log.kv(event="event_stream_down", url=self.url, error=repr(exc)))
            return
        self.appended += 1
        if not self.up:
            self.up = True
            logger.info(log.kv(event="event_stream_up", url=self.url, lost=self.lost))

    async def close(self) -> None:
        await self._redis.aclose()


async def read_events(
    url: str,
    after: str = "0-0",
    count: int = 1000,
    block_ms: int | None = None,
    stream: str = STREAM,
) -> list[tuple[str, dict[str, Any]]]:
    """The stream's entries after ``after`` (an entry id; ``"0-0"``: from the
    start), as ``(id, event)``; ``block_ms`` waits that long for new ones."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S)
    try:
        got: Any = await client.xread({stream: after}, count=count, block=block_ms)
    finally:
        await client.aclose()
    out = []
    for _name, entries in got or []:
        for entry_id, fields in entries:
            key = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            raw = fields.get(b"event") or fields.get("event")
            out.append((key, json.loads(raw)))
    return out

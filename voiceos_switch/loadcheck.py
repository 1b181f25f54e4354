"""The bridge's load, as a load balancer asks for it.

HAProxy's ``agent-check`` opens a TCP connection to the bridge's agent port
and reads one line: ``ready 63%`` sets the server's weight to that share
(the capacity the bridge has free: by calls against its limit, and by the
CPU its process used since the last check, whichever is fuller), and
``drain`` takes no new connection while the ones it has go on. A full
bridge answers ``ready 0%``; a draining one (SIGTERM) ``drain``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import log

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Load:
    active: int
    limit: int
    cpu_pct: float
    draining: bool

    @property
    def free_pct(self) -> int:
        used = max(100.0 * self.active / self.limit, self.cpu_pct)
        return max(0, min(100, round(100.0 - used)))

    def agent_reply(self) -> str:
        """The line HAProxy's agent-check reads."""
        if self.draining:
            return "drain\n"
        return f"ready {self.free_pct}%\n"


class CpuMeter:
    """This process's CPU use between two readings, in % of one core."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = (clock(), time.process_time())

    def read(self) -> float:
        now, cpu = self._clock(), time.process_time()
        wall = now - self._last[0]
        used = cpu - self._last[1]
        self._last = (now, cpu)
        if wall <= 0:
            return 0.0
        return min(100.0, 100.0 * used / wall)


async def serve_agent_check(host: str, port: int, load: Callable[[], Load]) -> asyncio.Server:
    """Answer each connection with the bridge's load, then close it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(load().agent_reply().encode())
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    bound = server.sockets[0].getsockname()
    logger.info(log.kv(event="agent_check_listening", address=f"{bound[0]}:{bound[1]}"))
    return server

"""The outbox: analysis jobs stored with the call, handed to Redis when it is up.

A call's record and its job are written in one transaction at hangup; this
loop (in the bridge) claims each pending job, sends it to the ``calls`` queue
and marks it enqueued; many bridges on one store each send a job once. While
Redis is down nothing is lost: the jobs stay pending, one log line says so,
and they go out when Redis is back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import log
from ..settings import Settings
from .kinds import ANALYZE_QUEUE

logger = log.get(__name__)


class Outbox:
    def __init__(self, store: Any, settings: Settings, retry_s: float = 2.0) -> None:
        self.store = store
        self.settings = settings
        self.retry_s = retry_s
        self._app: Any = None
        self.down_since: float | None = None
        self.sent = 0

    def _send(self, call_id: str) -> None:
        if self._app is None:
            from .app import make_app

            app = make_app(self.settings)
            # a producer only: no result store to wait on, and one quick
            # reconnect attempt, so a dead Redis is noticed at once
            app.conf.result_backend = None
            app.conf.broker_transport_options = {
                **app.conf.broker_transport_options,
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0.5,
                "interval_max": 0.5,
            }
            self._app = app
        self._app.send_task(
            "voiceos.analyze_call", args=[call_id], queue=ANALYZE_QUEUE, retry=False
        )

    async def flush(self) -> int:
        """Send what is pending; returns how many went out."""
        jobs = await asyncio.to_thread(self.store.pending_jobs)
        sent = 0
        for job in jobs:
            # bridges that share a store all see its pending jobs: the one
            # that claims a job sends it, so each is queued once
            if not await asyncio.to_thread(self.store.claim_job, job["id"]):
                continue
            try:
                await asyncio.to_thread(self._send, job["call_id"])
            except Exception as exc:  # noqa: BLE001 - kombu raises many kinds for "down"
                if self.down_since is None:
                    self.down_since = asyncio.get_running_loop().time()
                    logger.warning(
                        log.kv(
                            event="queue_unavailable",
                            pending=len(jobs),
                            error=str(exc) or type(exc).__name__,
                            hint="jobs are kept and sent when Redis is back",
                        )
                    )
                await asyncio.to_thread(self.store.job_failed, job["id"], str(exc))
                return sent
            await asyncio.to_thread(self.store.job_enqueued, job["id"])
            sent += 1
        if self.down_since is not None and sent:
            logger.info(log.kv(event="queue_back", sent=sent))
            self.down_since = None
        self.sent += sent
        return sent

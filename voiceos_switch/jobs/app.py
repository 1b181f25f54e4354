"""The Celery app: Redis as broker and result backend, settings from the
environment (VOICEOS_REDIS_URL, VOICEOS_DATABASE_URL, ...).

Tasks acknowledge late and are rejected back to the queue when their worker
dies, so a task cut off by SIGKILL runs again; every task is idempotent (its
result is stored once, first write wins).
"""

from __future__ import annotations

from celery import Celery

from ..settings import Settings
from .kinds import ALL_QUEUES


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or Settings()
    url = s.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("voiceos_switch", broker=url, backend=url, include=["voiceos_switch.jobs.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="calls",
        task_queues=None,
        task_create_missing_queues=True,
        broker_transport_options={"visibility_timeout": s.job_visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": s.job_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        result_expires=7 * 24 * 3600,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    app.conf.worker_queues = ALL_QUEUES  # informational; the CLI passes -Q
    return app


app = make_app()

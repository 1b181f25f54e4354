"""The Celery tasks. ``analyze_call`` fans a stored call out to one task per
analysis kind, each on its own queue; each stores its result once (first
write wins) and the last one marks the call complete and publishes that on
Redis (``voiceos:calls:completed``).

Retries: a store or broker hiccup (``TransientError``) retries with backoff;
bad input (a corrupt recording) is stored as a failed analysis with the
reason and never retried; any other error is stored the same way, so a
broken call cannot cause a retry storm.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy.exc import OperationalError

from ..records.store import Store
from ..settings import Settings
from .analyses import ANALYSES, PermanentError
from .app import app
from .kinds import COMPLETED_CHANNEL, KINDS, QUEUES

logger = logging.getLogger("voiceos_switch.jobs")

_state: dict[str, Any] = {}


class TransientError(Exception):
    """Worth another try: the store or the broker was briefly unavailable."""


def settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = Settings()
    return _state["settings"]  # type: ignore[no-any-return]


def store() -> Store:
    if "store" not in _state:
        s = Store(settings().resolved_database_url)
        s.migrate()
        _state["store"] = s
    return _state["store"]  # type: ignore[no-any-return]


def _enqueue(call_id: str, kind: str) -> None:
    run_analysis.apply_async((call_id, kind), queue=QUEUES[kind])


@app.task(name="voiceos.analyze_call", bind=True, max_retries=10, retry_backoff=True)
def analyze_call(self: Any, call_id: str) -> str:
    try:
        db = store()
        record = db.get_call(call_id)
        done = db.get_analyses(call_id)
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=2) from exc
    if record is None:
        logger.error("analyze_call: no call %s in the store", call_id)
        return "unknown call"
    for kind in KINDS:
        if kind not in done and kind != "qa":
            _enqueue(call_id, kind)
    if "transcript" in done and "qa" not in done:
        _enqueue(call_id, "qa")
    _maybe_complete(db, call_id)
    return "fanned out"


@app.task(
    name="voiceos.run_analysis",
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=6,
)
def run_analysis(self: Any, call_id: str, kind: str) -> str:
    try:
        db = store()
        if db.analysis_count(call_id, kind):
            _maybe_complete(db, call_id)
            return "already stored"
        record = db.get_call(call_id)
        context = _context(db, call_id, kind)
    except OperationalError as exc:
        raise TransientError(str(exc)) from exc
    if record is None:
        return "unknown call"
    try:
        result, status = ANALYSES[kind](record, settings(), context), "ok"
    except PermanentError as exc:
        logger.error("call %s: %s analysis failed for good: %s", call_id, kind, exc)
        result, status = {"error": str(exc)}, "failed"
    except Exception as exc:  # noqa: BLE001 - stored, not retried
        logger.exception("call %s: %s analysis crashed", call_id, kind)
        result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
    try:
        stored = db.save_analysis(call_id, kind, result, status)
    except OperationalError as exc:
        raise TransientError(str(exc)) from exc
    if stored:
        _to_stream({"kind": "analysis", "call_id": call_id, "analysis": kind, "status": status})
    if kind == "transcript":
        _enqueue(call_id, "qa")
    _maybe_complete(db, call_id)
    return "stored" if stored else "already stored"


def _to_stream(entry: dict[str, Any]) -> None:
    """An analysis's outcome on the bridges' event stream, for live viewers
    (the store has it anyway: a Redis hiccup here loses nothing)."""
    from ..eventstream import MAXLEN, STREAM, bridge_name

    body = {**entry, "at": time.time(), "bridge": f"worker:{bridge_name()}"}
    try:
        with app.connection_for_write() as conn:
            conn.default_channel.client.xadd(
                STREAM, {"event": json.dumps(body)}, maxlen=MAXLEN, approximate=True
            )
    except Exception:  # noqa: BLE001 - the store already has the result
        logger.warning("call %s: could not put %s on the event stream", entry["call_id"], entry)


def _context(db: Store, call_id: str, kind: str) -> dict[str, Any]:
    if kind == "topics":
        return {"corpus": list(db.all_records()), "known": db.results_of_kind("topics")}
    if kind == "qa":
        got = db.get_analyses(call_id).get("transcript")
        return {"transcript": got["result"] if got and got["status"] == "ok" else None}
    return {}


def _maybe_complete(db: Store, call_id: str) -> None:
    if set(db.get_analyses(call_id)) >= set(KINDS) and db.mark_complete(call_id):
        logger.info("call %s: every analysis done", call_id)
        try:
            with app.connection_for_write() as conn:
                client = conn.default_channel.client
                client.publish(COMPLETED_CHANNEL, json.dumps({"call_id": call_id}))
        except Exception:  # noqa: BLE001 - the store already says complete
            logger.warning("call %s: could not publish the completion event", call_id)
        _to_stream({"kind": "analyses_complete", "call_id": call_id})

"""The durable store: SQLite in WAL mode by default, PostgreSQL by URL.

Tables (created and upgraded by the Alembic migrations in ``migrations/``):

- ``calls``: one row per call, the whole record as JSON plus the columns
  lists and rollups filter on. Written once at hangup, idempotent by id.
- ``jobs``: the outbox. The analysis job is inserted in the same transaction
  as the call, so a call can never exist without its job; a dispatcher hands
  pending jobs to the queue and retries while the queue is down.
- ``analyses``: one row per call and analysis kind. A task that runs twice
  (a worker killed after its work but before its acknowledgement) stores its
  result once: the first write wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("pbx", String(16), nullable=False),
    Column("agent", String(64), nullable=False),
    Column("caller", String(64), nullable=False, default=""),
    Column("called", String(64), nullable=False, default=""),
    Column("started_at", Float, nullable=False, index=True),
    Column("ended_at", Float, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("cost_total", Float, nullable=False, default=0.0),
    Column("record", Text, nullable=False),
    Column("completed_at", Float, nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("state", String(16), nullable=False, index=True),  # pending, sending, enqueued
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("enqueued_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("call_id", "kind", name="uq_jobs_call_kind"),
)

analyses = Table(
    "analyses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),  # ok, failed
    Column("result", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("call_id", "kind", name="uq_analyses_call_kind"),
)


class StoreError(RuntimeError):
    pass


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'calls.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # a committed record survives power loss
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


#: a job claimed for sending this long ago by a bridge that never said it
#: was sent is pending again (that bridge died between the two)
CLAIM_STALE_S = 60.0


def _unsent() -> Any:
    return or_(
        jobs.c.state == "pending",
        and_(jobs.c.state == "sending", jobs.c.enqueued_at < time.time() - CLAIM_STALE_S),
    )


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self) -> None:
        """Bring the schema to the newest version (idempotent)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # calls ------------------------------------------------------------------------
    def save_call(self, record: dict[str, Any], job_kinds: tuple[str, ...] = ()) -> bool:
        """Write a call's record (and its outbox jobs) in one transaction.
        False if the call was already stored: the first record stands (also
        when another bridge stores it at the same moment)."""
        try:
            return self._save_call(record, job_kinds)
        except IntegrityError:
            if self.get_call(record["id"]) is not None:
                return False  # the other writer's insert won
            raise

    def _save_call(self, record: dict[str, Any], job_kinds: tuple[str, ...]) -> bool:
        now = time.time()
        with self.tx() as conn:
            if conn.execute(select(calls.c.id).where(calls.c.id == record["id"])).first():
                return False
            conn.execute(
                insert(calls).values(
                    id=record["id"],
                    pbx=record["pbx"],
                    agent=record["agent"],
                    caller=record["caller"],
                    called=record["called"],
                    started_at=record["started_at"],
                    ended_at=record["ended_at"],
                    duration_s=record["duration_s"],
                    cost_total=record["cost"]["total"],
                    record=json.dumps(record),
                )
            )
            for kind in job_kinds:
                conn.execute(
                    insert(jobs).values(
                        call_id=record["id"], kind=kind, state="pending", created_at=now
                    )
                )
        return True

    def get_call(self, call_id: str) -> dict[str, Any] | None:
        with self.tx() as conn:
            row = conn.execute(
                select(calls.c.record, calls.c.completed_at).where(calls.c.id == call_id)
            ).first()
        if row is None:
            return None
        record: dict[str, Any] = json.loads(row.record)
        record["completed_at"] = row.completed_at
        return record

    def find_call(self, prefix: str) -> str | None:
        """A call id from its first characters (as `calls show` accepts)."""
        with self.tx() as conn:
            rows = conn.execute(
                select(calls.c.id).where(calls.c.id.like(prefix.replace("%", "") + "%")).limit(2)
            ).all()
        if len(rows) != 1:
            return None
        return str(rows[0].id)

    def list_calls(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(
                select(
                    calls.c.id,
                    calls.c.pbx,
                    calls.c.agent,
                    calls.c.caller,
                    calls.c.called,
                    calls.c.started_at,
                    calls.c.duration_s,
                    calls.c.cost_total,
                    calls.c.completed_at,
                )
                .order_by(calls.c.started_at.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def all_records(self) -> Iterator[dict[str, Any]]:
        with self.tx() as conn:
            for row in conn.execute(select(calls.c.record).order_by(calls.c.started_at)):
                yield json.loads(row.record)

    def cost_rollup(self, by: str = "day") -> list[dict[str, Any]]:
        """Minutes, calls and cost per agent and per day."""
        day = (
            func.date(calls.c.started_at, "unixepoch")
            if self.engine.dialect.name == "sqlite"
            else func.to_char(func.to_timestamp(calls.c.started_at), "YYYY-MM-DD")
        )
        with self.tx() as conn:
            rows = conn.execute(
                select(
                    calls.c.agent,
                    day.label("day"),
                    func.count().label("calls"),
                    func.sum(calls.c.duration_s).label("seconds"),
                    func.sum(calls.c.cost_total).label("cost"),
                )
                .group_by(calls.c.agent, day)
                .order_by(day, calls.c.agent)
            ).all()
        return [
            {
                "agent": r.agent,
                "day": r.day,
                "calls": r.calls,
                "minutes": round((r.seconds or 0) / 60, 3),
                "cost": round(r.cost or 0, 6),
                "cost_per_minute": round((r.cost or 0) / (r.seconds / 60), 6) if r.seconds else 0.0,
            }
            for r in rows
        ]

    # the outbox ---------------------------------------------------------------------
    def pending_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """Jobs not yet queued: pending ones, and any a bridge claimed and
        did not finish sending (it died) more than ``CLAIM_STALE_S`` ago."""
        with self.tx() as conn:
            rows = conn.execute(
                select(jobs).where(_unsent()).order_by(jobs.c.id).limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    def claim_job(self, job_id: int) -> bool:
        """Take a job to send it: True for exactly one of the bridges that
        share this store and try at once (a compare-and-set on its state)."""
        with self.tx() as conn:
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, _unsent())
                .values(state="sending", enqueued_at=time.time())
            )
        return bool(done.rowcount == 1)

    def pending_count(self) -> int:
        with self.tx() as conn:
            n = conn.execute(
                select(func.count())
                .select_from(jobs)
                .where(jobs.c.state.in_(("pending", "sending")))
            ).scalar()
        return int(n or 0)

    def job_enqueued(self, job_id: int) -> None:
        with self.tx() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(state="enqueued", enqueued_at=time.time(), attempts=jobs.c.attempts + 1)
            )

    def job_failed(self, job_id: int, error: str) -> None:
        with self.tx() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(state="pending", attempts=jobs.c.attempts + 1, last_error=error[:500])
            )

    # analyses ------------------------------------------------------------------------
    def save_analysis(self, call_id: str, kind: str, result: Any, status: str = "ok") -> bool:
        """Store one analysis; False if it was already stored (first write wins)."""
        with self.tx() as conn:
            exists = conn.execute(
                select(analyses.c.id).where(
                    (analyses.c.call_id == call_id) & (analyses.c.kind == kind)
                )
            ).first()
            if exists:
                return False
            conn.execute(
                insert(analyses).values(
                    call_id=call_id,
                    kind=kind,
                    status=status,
                    result=json.dumps(result),
                    created_at=time.time(),
                )
            )
        return True

    def get_analyses(self, call_id: str) -> dict[str, dict[str, Any]]:
        with self.tx() as conn:
            rows = conn.execute(
                select(analyses.c.kind, analyses.c.status, analyses.c.result).where(
                    analyses.c.call_id == call_id
                )
            ).all()
        return {r.kind: {"status": r.status, "result": json.loads(r.result)} for r in rows}

    def recent_records(
        self, limit: int = 50
    ) -> list[tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
        """The latest calls, newest first, each with its analyses (two queries)."""
        with self.tx() as conn:
            rows = conn.execute(
                select(calls.c.id, calls.c.record, calls.c.completed_at)
                .order_by(calls.c.started_at.desc())
                .limit(limit)
            ).all()
            by_call: dict[str, dict[str, dict[str, Any]]] = {r.id: {} for r in rows}
            if by_call:
                for a in conn.execute(
                    select(
                        analyses.c.call_id, analyses.c.kind, analyses.c.status, analyses.c.result
                    ).where(analyses.c.call_id.in_(list(by_call)))
                ):
                    by_call[a.call_id][a.kind] = {
                        "status": a.status,
                        "result": json.loads(a.result),
                    }
        out = []
        for r in rows:
            record: dict[str, Any] = json.loads(r.record)
            record["completed_at"] = r.completed_at
            out.append((record, by_call[r.id]))
        return out

    def results_of_kind(self, kind: str) -> dict[str, Any]:
        """Every stored successful result of one kind, by call id."""
        with self.tx() as conn:
            rows = conn.execute(
                select(analyses.c.call_id, analyses.c.result).where(
                    (analyses.c.kind == kind) & (analyses.c.status == "ok")
                )
            ).all()
        return {r.call_id: json.loads(r.result) for r in rows}

    def analysis_count(self, call_id: str, kind: str) -> int:
        with self.tx() as conn:
            return int(
                conn.execute(
                    select(func.count()).where(
                        (analyses.c.call_id == call_id) & (analyses.c.kind == kind)
                    )
                ).scalar_one()
            )

    def mark_complete(self, call_id: str) -> bool:
        """True the first time only."""
        with self.tx() as conn:
            result = conn.execute(
                update(calls)
                .where((calls.c.id == call_id) & calls.c.completed_at.is_(None))
                .values(completed_at=time.time())
            )
        return bool(result.rowcount)

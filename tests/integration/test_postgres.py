"""Call records in a real PostgreSQL (Debian's server, its own cluster on a
loopback port, a generated password), shared by several bridges: the
migrations run on it, each record is stored once however many bridges
write, each analysis job is queued once, and a database that goes away
for a while loses no record: the bridge keeps it and stores it when the
database is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer
from tests.unit.test_audiosocket_server import Peer, audio
from tests.unit.test_records import record
from voiceos_switch import Agent
from voiceos_switch.jobs.outbox import Outbox
from voiceos_switch.protocols import audiosocket as p
from voiceos_switch.records.store import Store
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.close()


async def test_bridges_share_one_postgres_and_store_each_call_once(
    postgres: PostgresServer,
) -> None:
    stores = [Store(postgres.url) for _ in range(3)]
    stores[0].migrate()
    stores[1].migrate()  # a second bridge starting: nothing to do
    try:
        # three bridges write twenty calls at once, some of them twice
        # (a bridge retrying a record it kept while the database was away)
        def write(i: int) -> bool:
            return stores[i % 3].save_call(record(f"pg{i % 20}", ["hello"]), ("analyze",))

        with ThreadPoolExecutor(10) as pool:
            written = list(pool.map(write, range(30)))
        assert sum(written) == 20
        assert len(stores[2].list_calls(100)) == 20
        got = stores[1].get_call("pg7")
        assert got is not None and "hello" in [t["text"] for t in got["turns"]]

        redis = RedisServer()
        await asyncio.to_thread(redis.start)
        try:
            settings = Settings(redis_url=redis.url)
            outboxes = [Outbox(s, settings) for s in stores]
            sent = await asyncio.gather(*(o.flush() for o in outboxes for _ in range(2)))
            assert sum(sent) == 20
            import redis as redis_py

            assert redis_py.Redis(port=redis.port).llen("calls") == 20
            assert stores[0].pending_count() == 0
        finally:
            await asyncio.to_thread(redis.stop)
    finally:
        for s in stores:
            s.close()


async def test_a_database_that_goes_away_loses_no_record(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    settings = Settings(
        audiosocket="127.0.0.1:0",
        database_url=postgres.url,
        state_dir=tmp_path / "state",
        redis_url=None,
    )
    agent = Agent(settings=settings)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    try:
        await asyncio.wait_for(ready.wait(), 120)
        assert agent.server is not None and agent.server.address is not None
        call_id = uuid.uuid4()
        peer = await Peer.connect(agent.server.address)
        peer.send(p.CallId(call_id), audio(0))
        assert await peer.read_frames(5, timeout=60)

        # the database goes away, then the call ends
        await asyncio.to_thread(postgres.stop)
        peer.send(p.Hangup())
        assert await peer.closed(timeout=30)
        kept = settings.state_dir / "records-unsaved" / f"{call_id}.json"
        deadline = time.monotonic() + 60
        while not kept.exists():
            assert time.monotonic() < deadline, "the record was not kept while the store was down"
            await asyncio.sleep(0.1)

        # it comes back: the record goes in, once, and the kept file goes
        await asyncio.to_thread(postgres.start)
        check = Store(postgres.url)
        try:
            deadline = time.monotonic() + 60
            while await asyncio.to_thread(check.get_call, str(call_id)) is None:
                assert time.monotonic() < deadline, "the kept record never reached the store"
                await asyncio.sleep(0.2)
            assert not kept.exists()
            assert [c["id"] for c in check.list_calls(10)] == [str(call_id)]
        finally:
            check.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

"""Scale-out on loopback: Kamailio's dispatcher in front of two real
Asterisk 22 instances, three bridge processes serving both, one PostgreSQL
and one Redis.

Twenty real SIP calls come from a carrier (a third Asterisk, whose caller
waits for the greeting, asks, listens to the answer and hangs up). They
spread over both PBXs and all three bridges; one bridge is sent SIGTERM
while it has calls: those go on to the end, new calls go to the others,
and it exits 0 once its last call ends (then comes back, as in a rolling
restart). Then one Asterisk is killed: new calls still succeed through the
other. Every call's record is in
PostgreSQL exactly once.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.audiocheck import utterances
from tests.integration.test_analytics import question_wav
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer, free_port
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.kamailio import Pbx, SipProxy
from voiceos_switch.pbx.labcall import LabCallResult, place_call, read_wav_mono16
from voiceos_switch.records.store import Store
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration

PROXY = "127.0.0.1:5370"
AMI_SECRET = secrets.token_urlsafe(18)


def pbx_settings(n: int, bridges: str = "") -> Settings:
    """PBX number ``n`` (1, 2; 3 is the carrier): ports of its own."""
    base = 5260 + 100 * n
    return Settings(
        asterisk_root=Settings().state_dir / f"asterisk-cell{n}",
        sip_port=base,
        carrier_sim_port=base + 2,
        ami_port=base - 22,
        ami_secret=AMI_SECRET,
        asterisk_http_port=8288 + 100 * n,
        asterisk_rtp_ports=f"{22000 + 1000 * n}-{22999 + 1000 * n}",
        asterisk_bridges=bridges or None,
        asterisk_sip_proxy=PROXY,
        lab_carrier_target=PROXY,
    )


async def until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.2)


class BridgeProcess:
    def __init__(self, n: int, tmp: Path, env: dict[str, str], port: int | None = None) -> None:
        self.n = n
        self.name = f"bridge-{n}"
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tmp / f"{self.name}{'-again' if port else ''}.log"
        environ = dict(
            os.environ,
            VOICEOS_AUDIOSOCKET=self.address,
            VOICEOS_BRIDGE_NAME=self.name,
            VOICEOS_STATE_DIR=str(tmp / self.name),
            VOICEOS_MAX_CALLS="8",
            **env,
        )
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voiceos_switch.cli", "serve", "--agent",
                 "voiceos_switch.demo:agent"],
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def count(self, event: str) -> int:
        return len(re.findall(rf"event={event}\b", self.text()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def services() -> Iterator[tuple[PostgresServer, RedisServer]]:
    postgres = PostgresServer().start()
    redis = RedisServer().start()
    yield postgres, redis
    redis.stop()
    postgres.close()


@asynccontextmanager
async def cell(tmp: Path, url: str, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """Two PBXs behind the proxy, three bridges serving both, the carrier."""
    template = AsteriskSandbox(Settings())
    bridges: list[BridgeProcess] = []
    sandboxes: list[AsteriskSandbox] = []
    proxy = SipProxy(tmp / "kamailio", [], listen=PROXY)
    try:
        ami = ",".join(f"127.0.0.1:{pbx_settings(n).ami_port}" for n in (1, 2))
        env = {
            "VOICEOS_DATABASE_URL": url,
            "VOICEOS_REDIS_URL": redis_url,
            "VOICEOS_AMI_HOSTS": ami,
            "VOICEOS_AMI_SECRET": AMI_SECRET,
        }
        bridges = [BridgeProcess(n, tmp, env) for n in (1, 2, 3)]
        chain = "&".join(b.address for b in bridges)
        sandboxes = [AsteriskSandbox(pbx_settings(n, chain), template=template) for n in (1, 2, 3)]
        for sandbox in sandboxes:
            await asyncio.to_thread(sandbox.restart)
        proxy.pbxs = [Pbx(f"127.0.0.1:{s.settings.sip_port}", 20) for s in sandboxes[:2]]
        await asyncio.to_thread(proxy.start)
        for pbx in proxy.pbxs:
            await asyncio.to_thread(proxy.wait_state, pbx, True)
        for b in bridges:
            await until(
                lambda b=b: b.proc.poll() is not None or b.count("bridge_ready") > 0,
                300,
                f"{b.name} never got ready",
            )
            assert b.proc.poll() is None, b.text()[-3000:]
        yield {
            "bridges": bridges,
            "pbxs": sandboxes[:2],
            "carrier": sandboxes[2],
            "proxy": proxy,
            "env": env,
            "tmp": tmp,
        }
    finally:
        for b in bridges:
            b.stop()
        proxy.stop()
        for sandbox in sandboxes:
            await asyncio.to_thread(sandbox.down)


async def call(carrier: AsteriskSandbox, question: Path, n: int) -> LabCallResult:
    return await place_call(
        "100",
        settings=carrier.settings,
        play=question,
        answer_first=True,
        caller_id=f"1555{n:04d}",
        timeout=240,
    )


def heard(result: LabCallResult) -> list[tuple[float, float]]:
    """What the caller heard, as (start, end) seconds of each utterance."""
    if result.heard is None:
        return []
    pcm, rate = read_wav_mono16(result.heard)
    return [(round(a / rate, 2), round(b / rate, 2)) for a, b in utterances(pcm, rate)]


def answered(result: LabCallResult) -> bool:
    """The caller heard the greeting and, after its question, the answer."""
    if not result.answered or result.heard is None:
        return False
    pcm, rate = read_wav_mono16(result.heard)
    return len(utterances(pcm, rate)) >= 2


async def test_calls_spread_survive_a_drain_and_a_dead_pbx_and_are_stored_once(
    services: tuple[PostgresServer, RedisServer], tmp_path: Path
) -> None:
    postgres, redis = services
    store = Store(postgres.url)
    store.migrate()
    question = await question_wav(tmp_path, "Hi. What are your opening hours on Saturday?")
    async with cell(tmp_path, postgres.url, redis.url) as c:
        bridges: list[BridgeProcess] = c["bridges"]
        pbx1, pbx2 = c["pbxs"]
        proxy: SipProxy = c["proxy"]
        first = bridges[0]

        # phase 1: ten calls, one every 0.8 s; once the first bridge has
        # calls in progress it is told to stop (SIGTERM)
        calls: dict[int, asyncio.Task[LabCallResult]] = {}
        drained_at = None
        for n in range(10):
            calls[n] = asyncio.create_task(call(c["carrier"], question, n))
            await asyncio.sleep(0.8)
            active = first.count("call_started") - first.count("call_ended")
            if drained_at is None and n >= 3 and active > 0:
                first.proc.send_signal(signal.SIGTERM)
                drained_at = n
                await until(lambda: "draining" in first.text(), 30, "no drain logged")
        assert drained_at is not None, "the first bridge never had a call in progress"
        phase1 = {n: await asyncio.wait_for(t, 300) for n, t in calls.items()}
        assert all(answered(r) for r in phase1.values()), {
            n: (r.answered, r.hangup_cause, heard(r), r.heard)
            for n, r in phase1.items()
            if not answered(r)
        }
        # the drained bridge finished its calls, then exited by itself
        await asyncio.to_thread(first.proc.wait, 120)
        assert first.proc.returncode == 0, first.text()[-2000:]
        # the rolling restart: it comes back on its port (until then the
        # PBXs' connects to it are refused, which Asterisk 22 handles badly
        # when other calls are up: see docs/scaling.md)
        again = BridgeProcess(1, c["tmp"], c["env"], port=first.port)
        bridges.append(again)
        await until(lambda: again.count("bridge_ready") > 0, 300, "bridge-1 did not come back")

        # phase 2: the first PBX dies; new calls go through the second
        pid = int(pbx1.host_path("run/asterisk/asterisk.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        tasks = {}
        for n in range(10, 20):
            tasks[n] = asyncio.create_task(call(c["carrier"], question, n))
            await asyncio.sleep(0.5)
        phase2 = {n: await asyncio.wait_for(t, 300) for n, t in tasks.items()}
        assert all(answered(r) for r in phase2.values()), {
            n: (r.answered, r.hangup_cause, heard(r), r.heard)
            for n, r in phase2.items()
            if not answered(r)
        }
        proxy_log = "\n".join(proxy.log_lines("voiceos:"))
        pbx1_uri = f"sip:127.0.0.1:{pbx1.settings.sip_port}"
        assert not proxy.states()[pbx1_uri].startswith("A"), proxy.states()

        # every call in PostgreSQL exactly once, stored by the bridge that served it
        callers = {f"1555{n:04d}" for n in range(20)}

        def ours() -> list[dict[str, Any]]:
            rows = [store.get_call(r["id"]) for r in store.list_calls(500)]
            return [r for r in rows if r is not None and r["caller"] in callers]

        await until(lambda: len(ours()) >= 20, 120, "not every call was stored")
        records = ours()
        assert sorted(r["caller"] for r in records) == sorted(callers)
        by_caller = {r["caller"]: r for r in records}
        for r in records:
            roles = [t["role"] for t in r["turns"]]
            assert "caller" in roles and roles.count("agent") >= 2, (r["caller"], r["turns"])

        # spread: both PBXs and all three bridges took calls before the drain
        before = [by_caller[f"1555{n:04d}"] for n in range(drained_at + 1)]
        assert {r["bridge"] for r in before} == {"bridge-1", "bridge-2", "bridge-3"}, [
            (r["caller"], r["bridge"]) for r in before
        ]
        ami = {f"127.0.0.1:{p.settings.ami_port}" for p in (pbx1, pbx2)}
        assert {by_caller[f"1555{n:04d}"]["pbx_address"] for n in range(10)} == ami
        # while it drained no new call went to the first bridge ...
        later = [by_caller[f"1555{n:04d}"] for n in range(drained_at + 1, 10)]
        assert all(r["bridge"] != "bridge-1" for r in later)
        # ... and after the first PBX died, every call went through the second
        assert all(
            by_caller[f"1555{n:04d}"]["pbx_address"] == f"127.0.0.1:{pbx2.settings.ami_port}"
            for n in range(10, 20)
        ), proxy_log
    store.close()


async def test_pbxs_that_answer_options_but_fail_or_ignore_invites_are_passed_over(
    tmp_path: Path,
) -> None:
    from tests.sip_responder import BrokenPbx
    from voiceos_switch import Agent, Call

    failing = await BrokenPbx(free_port_udp(), "fail").start()
    silent = await BrokenPbx(free_port_udp(), "silent").start()
    bridge_port = free_port()
    template = AsteriskSandbox(Settings())
    pbx = AsteriskSandbox(pbx_settings(1, f"127.0.0.1:{bridge_port}"), template=template)
    carrier = AsteriskSandbox(pbx_settings(3), template=template)
    proxy = SipProxy(
        tmp_path / "kamailio",
        [Pbx(failing.address), Pbx(silent.address), Pbx(f"127.0.0.1:{pbx.settings.sip_port}")],
        listen=PROXY,
    )
    agent = Agent(
        settings=Settings(
            audiosocket=f"127.0.0.1:{bridge_port}",
            ami_port=pbx.settings.ami_port,
            ami_secret=AMI_SECRET,
            recordings_dir=tmp_path / "rec",
            state_dir=tmp_path / "state",
        )
    )
    ended: list[Call] = []
    agent.on("call_ended")(ended.append)
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop))
    try:
        for sandbox in (pbx, carrier):
            await asyncio.to_thread(sandbox.restart)
        await asyncio.to_thread(proxy.start)
        # all three answer the proxy's OPTIONS: all look healthy
        for p in proxy.pbxs:
            await asyncio.to_thread(proxy.wait_state, p, True)
        await asyncio.wait_for(ready.wait(), 60)
        # calls at once: the proxy spreads them by load, so the broken PBXs
        # get INVITEs too; each such call goes on to the next PBX
        results = await asyncio.gather(
            *(
                place_call(
                    "100", settings=carrier.settings, delay=1.0, hold=3.0, caller_id=f"1666{n}"
                )
                for n in range(4)
            )
        )
        assert all(r.answered for r in results), [(r.answered, r.hangup_cause) for r in results]
        assert sorted(c.caller for c in ended) == [f"1666{n}" for n in range(4)]
        assert failing.invites >= 1 and silent.invites >= 1
        assert failing.options >= 1 and silent.options >= 1
        # one clear line for each PBX passed over
        failed = proxy.log_lines(f"PBX sip:{failing.address} failed call .* with 503")
        timed_out = proxy.log_lines(f"PBX sip:{silent.address} did not answer call .* in time")
        assert failed and timed_out, proxy.log_tail(30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        proxy.stop()
        failing.close()
        silent.close()
        for sandbox in (pbx, carrier):
            await asyncio.to_thread(sandbox.down)


def free_port_udp() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""A bridge told to go (SIGTERM) drains: it takes no new call, the PBX's next
connection is closed at once, the calls it has go on to their end, then it
exits; a load balancer's agent-check reads its load, then ``drain``.

The bridge is its own process (``voiceos-switch serve``, the built-in
greeting agent), its caller a real AudioSocket connection on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.unit.test_audiosocket_server import Peer, audio
from voiceos_switch.loadcheck import CpuMeter, Load, serve_agent_check
from voiceos_switch.protocols import audiosocket as p


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def agent_check(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as sock:
            return sock.recv(64).decode()
    except OSError:
        return ""


class Bridge:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int, check: int) -> None:
        self.proc, self.log, self.port, self.check = proc, log, port, check

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start(tmp_path: Path, env: dict[str, str]) -> Bridge:
    tmp_path.mkdir(parents=True, exist_ok=True)
    port, check = free_port(), free_port()
    environ = dict(
        os.environ,
        VOICEOS_AUDIOSOCKET=f"127.0.0.1:{port}",
        VOICEOS_AGENT_CHECK=f"127.0.0.1:{check}",
        VOICEOS_MAX_CALLS="4",
        VOICEOS_STATE_DIR=str(tmp_path / "state"),
        VOICEOS_REDIS_URL="",
        **env,
    )
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voiceos_switch.cli", "serve"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Bridge(proc, log, port, check)


@asynccontextmanager
async def bridge(tmp_path: Path, **env: str) -> AsyncIterator[Bridge]:
    b = await asyncio.to_thread(start, tmp_path, env)
    try:
        await until(
            lambda: b.proc.poll() is None and agent_check(b.check).startswith("ready"),
            120,
            "the bridge never answered its agent check (see its log)",
        )
        yield b
    finally:
        if b.proc.poll() is None:
            b.proc.kill()
        await asyncio.to_thread(b.proc.wait, 10)


async def call(port: int) -> Peer:
    peer = await Peer.connect(("127.0.0.1", port))
    peer.send(p.CallId(uuid.uuid4()), audio(0))
    assert await peer.read_frames(5, timeout=60), "the bridge sent nothing on the call"
    return peer


async def test_sigterm_drains_then_exits_when_the_last_call_ends(tmp_path: Path) -> None:
    async with bridge(tmp_path) as b:
        peer = await call(b.port)
        # one call of four: at most three quarters free (less if the CPU is busy)
        load = agent_check(b.check)
        assert load.startswith("ready ") and int(load.split()[1].rstrip("%")) <= 75, load

        b.proc.send_signal(signal.SIGTERM)
        await until(lambda: agent_check(b.check) == "drain\n", 30, "the bridge never said drain")
        # a new call is closed at once, before a frame: the PBX moves on to
        # another bridge (the socket still listens: a refused connect is
        # what Asterisk 22's AudioSocket handles badly)
        newcomer = await Peer.connect(("127.0.0.1", b.port))
        newcomer.send(p.CallId(uuid.uuid4()), audio(0))
        try:
            got = await newcomer.read_frames(1, timeout=10)  # until EOF
        except ConnectionResetError:  # closed with a reset: as plain a "no"
            got = []
        assert got == []
        # the call in progress goes on: its audio flows both ways
        for i in range(25):
            peer.send(audio(i))
        assert len(await peer.read_frames(25, timeout=30)) >= 25
        assert b.proc.poll() is None, "the bridge left before its call ended"

        peer.send(p.Hangup())
        assert await peer.closed(timeout=30)
        assert await asyncio.to_thread(b.proc.wait, 60) == 0
        text = b.text()
        assert "event=draining active=1" in text and "event=drained" in text


async def test_a_drain_ends_at_its_timeout_and_a_second_sigterm_at_once(tmp_path: Path) -> None:
    async with bridge(tmp_path, VOICEOS_DRAIN_TIMEOUT_S="1") as b:
        peer = await call(b.port)
        b.proc.send_signal(signal.SIGTERM)
        assert await peer.closed(timeout=60), "the call outlived the drain's timeout"
        assert await asyncio.to_thread(b.proc.wait, 60) == 0
        assert "event=drain_timeout active=1" in b.text()

    async with bridge(tmp_path / "again") as b:
        peer = await call(b.port)
        b.proc.send_signal(signal.SIGTERM)
        await until(lambda: agent_check(b.check) == "drain\n", 30, "the bridge never said drain")
        b.proc.send_signal(signal.SIGTERM)
        assert await peer.closed(timeout=30)
        assert await asyncio.to_thread(b.proc.wait, 60) == 0


def test_the_agent_reply_is_the_share_free_by_calls_or_cpu() -> None:
    assert Load(active=0, limit=10, cpu_pct=0.0, draining=False).agent_reply() == "ready 100%\n"
    assert Load(active=3, limit=10, cpu_pct=12.0, draining=False).agent_reply() == "ready 70%\n"
    assert Load(active=3, limit=10, cpu_pct=85.0, draining=False).agent_reply() == "ready 15%\n"
    assert Load(active=10, limit=10, cpu_pct=5.0, draining=False).agent_reply() == "ready 0%\n"
    assert Load(active=2, limit=10, cpu_pct=5.0, draining=True).agent_reply() == "drain\n"
    ticks = iter([0.0, 1.0])
    meter = CpuMeter(clock=lambda: next(ticks))
    sum(i * i for i in range(200_000))  # some CPU, well under a second of it
    assert 0.0 < meter.read() < 100.0


async def test_the_agent_check_answers_each_connection_and_closes() -> None:
    loads = iter([Load(1, 4, 0.0, False), Load(1, 4, 0.0, True)])
    server = await serve_agent_check("127.0.0.1", 0, lambda: next(loads))
    port = server.sockets[0].getsockname()[1]
    try:
        assert await asyncio.to_thread(agent_check, port) == "ready 75%\n"
        assert await asyncio.to_thread(agent_check, port) == "drain\n"
    finally:
        server.close()

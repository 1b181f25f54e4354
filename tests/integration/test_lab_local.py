"""`voiceos-switch lab` as a newcomer runs it: up, a demo call, status, down.

Everything is the real thing: the managed Asterisk 22, redis-server, the
bridge, a Celery worker and the dashboard as processes of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audiocheck import heard_words
from tests.webget import get
from voiceos_switch.lab.local import LocalLab, holder, lab_ports
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import read_wav_mono16
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def lab_env() -> Iterator[dict[str, str]]:
    # the ports the suite's other servers might use are moved aside; the
    # PBX ports stay the defaults, as a newcomer's would
    env = dict(os.environ)
    env.update(
        VOICEOS_LAB_REDIS_PORT=str(free_port()),
        VOICEOS_LAB_DASHBOARD_PORT=str(free_port()),
        VOICEOS_LAB_METRICS_PORT=str(free_port()),
        VOICEOS_LOG_LEVEL="WARNING",
    )
    yield env
    lab(env, "down")


def lab(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voiceos_switch.cli", "lab", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def settings_for(env: dict[str, str]) -> Settings:
    return Settings(
        lab_redis_port=int(env["VOICEOS_LAB_REDIS_PORT"]),
        lab_dashboard_port=int(env["VOICEOS_LAB_DASHBOARD_PORT"]),
        lab_metrics_port=int(env["VOICEOS_LAB_METRICS_PORT"]),
    )


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_lab_up_call_status_down(asterisk: AsteriskSandbox, lab_env: dict[str, str]) -> None:
    # beside a running PBX holding its ports, the lab refuses and says which
    assert asterisk.running()
    refused = lab(lab_env, "up")
    assert refused.returncode != 0
    assert "127.0.0.1:5060/udp (SIP) is held by pid" in refused.stderr
    assert "(asterisk)" in refused.stderr and "VOICEOS_SIP_PORT" in refused.stderr
    assert lab(lab_env, "status").returncode == 3, "a refused start left something behind"

    asterisk.down()
    try:
        up = lab(lab_env, "up")
        assert up.returncode == 0, up.stderr
        # progress for each of the five services, then where to go
        for step in (
            "1/5 Asterisk",
            "2/5 Redis",
            "3/5 the bridge",
            "4/5 a Celery worker",
            "5/5 the dashboard",
        ):
            assert step in up.stderr
        assert "dashboard: http://127.0.0.1:" in up.stdout
        status = lab(lab_env, "status")
        assert status.returncode == 0, status.stdout
        assert [line.split()[:2] for line in status.stdout.splitlines()] == [
            [name, "running"] for name in ("asterisk", "redis", "bridge", "worker", "dashboard")
        ]

        # the demo call: a real SIP call from the lab carrier through Asterisk
        call = lab(lab_env, "call")
        assert call.returncode == 0, call.stdout + call.stderr
        assert "answered" in call.stdout and "agent: Hello, Acme Hardware" in call.stdout
        heard_path = Path(call.stdout.split(" -> ")[1].split()[0])
        heard, rate = read_wav_mono16(heard_path)
        words = asyncio.run(heard_words(heard, rate))
        # the hours as the caller heard them (tiny.en often hears "nine" as "high")
        assert {"open", "six", "evening", "saturday", "closed"} <= set(words), " ".join(words)

        # the call is on the dashboard, behind its token
        settings = settings_for(lab_env)
        token = json.loads((LocalLab(settings).secrets_path).read_text())["dashboard_token"]
        base = f"http://127.0.0.1:{settings.lab_dashboard_port}"
        assert get(f"{base}/api/calls", "not-the-token-at-all")[0] == 401
        code, body = get(f"{base}/api/calls", token)
        assert code == 200
        call_id = call.stdout.split()[1].rstrip(":")
        assert call_id in {c["id"] for c in json.loads(body)["calls"]}
        # with the browser phone, its SIP account the managed Asterisk's
        phone = json.loads(get(f"{base}/api/phone", token)[1])
        assert phone["enabled"] and phone["ws"] == "ws://127.0.0.1:8088/ws", phone
        assert phone["password"] == asterisk.webphone_password()

        # a service that dies is reported, with its log
        state = LocalLab(settings).state()
        assert state is not None
        os.killpg(state["services"]["worker"]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while (status := lab(lab_env, "status")).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status.returncode == 1
        assert "worker     DEAD" in status.stdout and "worker.log" in status.stdout

        down = lab(lab_env, "down")
        assert down.returncode == 0, down.stderr
        assert "its ports are free" in down.stderr
        assert lab(lab_env, "status").returncode == 3
        assert not asterisk.running()
        pids = [s["pid"] for s in state["services"].values() if "pid" in s]
        assert [pid for pid in pids if running(pid)] == []
        assert [str(p) for p in lab_ports(settings) if holder(p)] == []
    finally:
        lab(lab_env, "down")
        asterisk.restart()

"""A real redis-server on a free loopback port and a real Celery worker
process, for the tests and benchmarks that need them."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Worker:
    """``voiceos-switch worker`` as its own process, its output in ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, env: dict[str, str], log: Path, timeout: float = 60) -> Worker:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "voiceos_switch.cli", "worker", "--concurrency", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = cls(proc, log)
        worker.wait_for(" ready.", timeout)
        return worker

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            time.sleep(0.05)
        raise AssertionError(f"worker never logged {needle!r}:\n{self.text()[-2000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

"""A real PostgreSQL server for tests: Debian's, a cluster of its own in a
temporary folder, on a loopback port, with a generated password (SCRAM)."""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed (scripts/setup installs Debian's postgresql)"
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """``start()``, then ``url`` (SQLAlchemy, psycopg); ``stop()`` and
    ``start()`` again keep the data (a database that goes away and comes
    back); ``close()`` removes the cluster."""

    def __init__(self) -> None:
        self.bin = _bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="voiceos-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.password = secrets.token_urlsafe(18)
        self.url = f"postgresql+psycopg://voiceos:{self.password}@127.0.0.1:{self.port}/postgres"
        self._user: str | None = None
        self._initialised = False

    def _as_owner(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        # initdb and postgres refuse to run as root
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120)

    def _init(self) -> None:
        if os.geteuid() == 0:
            self._user = "postgres"
            try:
                pw = pwd.getpwnam(self._user)
            except KeyError as exc:
                raise AssertionError("no postgres user: is Debian's postgresql installed?") from exc
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user:
            shutil.chown(pwfile, self._user)
        done = self._as_owner(
            str(self.bin / "initdb"),
            "-D", str(self.data),
            "-U", "voiceos",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E", "UTF8",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        pwfile.unlink()
        self._initialised = True

    def start(self) -> PostgresServer:
        if not self._initialised:
            self._init()
        done = self._as_owner(
            str(self.bin / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.dir / "server.log"),
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir}",
            "-w", "-t", "60",
            "start",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.log()
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.1)

    def stop(self) -> None:
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

"""A Docker engine for the tests that run containers (the lab's compose file).

``ensure_dockerd()`` uses the engine that answers ``docker info``; when none
does, it starts ``dockerd`` as root with the flags a CI machine without a
bridge or iptables needs (every lab service uses the host's network), its log
in a file, and waits until it answers. ``DockerEngine.stop()`` stops it again
only if this process started it.

The client is ``docker`` on PATH (``VOICEOS_DOCKER`` names another). Compose
is ``docker compose`` (v2) when the client has it, else ``docker-compose``
(1.29, Debian's package); ``VOICEOS_COMPOSE`` names one outright.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: the flags a root dockerd needs here: no docker0 bridge, no iptables rules
DOCKERD_FLAGS = ("--iptables=false", "--bridge=none")
#: a cold dockerd on a busy machine (first start makes its data root): well under this
START_LIMIT_S = 120.0


class DockerUnavailable(RuntimeError):
    """No Docker engine, and none could be started here."""


def docker_client() -> str:
    chosen = os.environ.get("VOICEOS_DOCKER") or shutil.which("docker")
    if not chosen:
        raise DockerUnavailable("no docker client on PATH: apt-get install -y docker.io")
    return chosen


def compose_command(docker: str | None = None) -> list[str]:
    """The compose command to run: ``docker compose`` or ``docker-compose``."""
    if os.environ.get("VOICEOS_COMPOSE"):
        return shlex.split(os.environ["VOICEOS_COMPOSE"])
    docker = docker or docker_client()
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    raise DockerUnavailable(
        "neither `docker compose` nor `docker-compose` is installed: "
        "apt-get install -y docker-compose"
    )


def engine_answers(docker: str, timeout: float = 10.0) -> bool:
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


@dataclass
class DockerEngine:
    docker: str
    started: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    compose: list[str] = field(default_factory=list)

    def stop(self) -> None:
        """Stop dockerd if we started it (containers it runs stop with it)."""
        proc, self.started = self.started, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def ensure_dockerd(log: Path, limit: float = START_LIMIT_S) -> DockerEngine:
    """A Docker engine that answers: the running one, or a dockerd started now."""
    docker = docker_client()
    if engine_answers(docker):
        return DockerEngine(docker, compose=compose_command(docker))
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerUnavailable("no Docker engine answers and dockerd is not installed")
    if os.geteuid() != 0:
        raise DockerUnavailable("no Docker engine answers, and starting dockerd needs root")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [dockerd, *DOCKERD_FLAGS],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = DockerEngine(docker, proc, log)
    deadline = time.monotonic() + limit
    while not engine_answers(docker, timeout=5):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise DockerUnavailable(
                f"dockerd exited ({proc.returncode}); the end of {log}:\n" + "\n".join(tail)
            )
        if time.monotonic() > deadline:
            engine.stop()
            raise DockerUnavailable(f"dockerd did not answer within {limit:.0f} s; see {log}")
        time.sleep(0.5)
    engine.compose = compose_command(docker)
    return engine

"""``voiceos-switch lab``: the lab topology as processes on this machine.

The managed Asterisk 22 (its sandbox root), redis-server, the bridge, a
Celery worker and the dashboard, each a process of its own that outlives
the command that started it. What runs is written to ``state_dir/lab``:
``lab.json`` (processes, ports) and ``secrets.json`` (mode 600: the Redis
password and the dashboard token, made once and kept). ``down`` stops
everything ``up`` started and checks that the ports are free again.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pbx.asterisk import AsteriskError, AsteriskSandbox
from ..pbx.ports import Port, holder
from ..settings import Settings, split_hostport

#: the processes, in the order they start (and stop in reverse)
SERVICES = ("asterisk", "redis", "bridge", "worker", "dashboard")
DEFAULT_AGENT = "voiceos_switch.demo:agent"
#: the bridge listens at once and loads its models after: well under this
BRIDGE_READY_S = 300.0
READY_S = 60.0


class LabError(RuntimeError):
    """Something a person can act on went wrong with the lab."""


def _say(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


def lab_ports(settings: Settings) -> list[Port]:
    """Every loopback port the lab listens on."""
    _, audiosocket = split_hostport(settings.audiosocket)
    return [
        Port("udp", settings.sip_port, "SIP", "VOICEOS_SIP_PORT"),
        Port("udp", settings.carrier_sim_port, "lab carrier SIP", "VOICEOS_CARRIER_SIM_PORT"),
        Port("tcp", settings.ami_port, "AMI", "VOICEOS_AMI_PORT"),
        Port(
            "tcp",
            settings.asterisk_http_port,
            "Asterisk HTTP/WebSocket",
            "VOICEOS_ASTERISK_HTTP_PORT",
        ),
        Port("tcp", audiosocket, "bridge AudioSocket", "VOICEOS_AUDIOSOCKET"),
        Port("tcp", settings.lab_redis_port, "Redis", "VOICEOS_LAB_REDIS_PORT"),
        Port("tcp", settings.lab_dashboard_port, "dashboard", "VOICEOS_LAB_DASHBOARD_PORT"),
        Port("tcp", settings.lab_metrics_port, "bridge metrics", "VOICEOS_LAB_METRICS_PORT"),
    ]


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (None when it is gone or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after = stat.rsplit(")", 1)[1].split()
    if after[0] in ("Z", "X"):
        return None
    return after[19]


@dataclass
class ServiceStatus:
    name: str
    state: str  # "running", "dead" or "stopped"
    pid: int | None = None
    where: str = ""
    log: Path | None = None
    last_line: str = ""


@dataclass
class CallReport:
    call_id: str | None
    answered: bool
    heard_s: float
    heard: Path | None
    record: dict[str, Any] | None
    hangup_cause: str
    dashboard_url: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)


class LocalLab:
    def __init__(self, settings: Settings | None = None, say: Callable[[str], None] = _say) -> None:
        self.settings = settings or Settings()
        self.say = say
        self.dir = self.settings.state_dir / "lab"
        self.state_path = self.dir / "lab.json"
        self.secrets_path = self.dir / "secrets.json"
        self.asterisk = AsteriskSandbox(self.settings)

    # state -------------------------------------------------------------------
    def state(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return data

    def _write_state(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def secrets(self) -> dict[str, str]:
        """The lab's secrets, made once (mode 600) and kept across runs."""
        try:
            known: dict[str, str] = json.loads(self.secrets_path.read_text())
        except (OSError, ValueError):
            known = {}
        changed = False
        for key in ("redis_password", "dashboard_token"):
            if not known.get(key):
                known[key] = secrets.token_urlsafe(18)
                changed = True
        if self.settings.dashboard_token is not None:
            known["dashboard_token"] = self.settings.dashboard_token.get_secret_value()
        if changed:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(known, fh)
        return known

    # up ------------------------------------------------------------------------
    def check_ports(self) -> None:
        """Refuse to start beside anything holding the lab's ports, naming them."""
        held = []
        for port in lab_ports(self.settings):
            who = holder(port)
            if who is not None:
                held.append(
                    f"  {port} is held by {who}: stop it, or move the lab with {port.setting}"
                )
        if held:
            raise LabError("cannot start the lab:\n" + "\n".join(held))

    def up(self, agent: str = DEFAULT_AGENT) -> dict[str, Any]:
        current = self.state()
        if current is not None:
            statuses = self.status()
            if all(s.state == "running" for s in statuses):
                self.say("the lab is already up")
                return current
            dead = ", ".join(s.name for s in statuses if s.state != "running")
            self.say(f"the lab was up with {dead} down: restarting it")
            self.down(quiet=True)
        if shutil.which("redis-server") is None:
            raise LabError("redis-server is not installed; run: apt-get install -y redis-server")
        self.check_ports()
        secret = self.secrets()
        self.dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        redis_url = f"redis://:{secret['redis_password']}@127.0.0.1:{s.lab_redis_port}/0"
        dashboard = f"127.0.0.1:{s.lab_dashboard_port}"
        state: dict[str, Any] = {
            "started_at": time.time(),
            "agent": agent,
            "ports": {p.what: f"{p.port}/{p.proto}" for p in lab_ports(s)},
            "dashboard": f"http://{dashboard}/",
            "ami_port": s.ami_port,
            "sip_port": s.sip_port,
            "audiosocket": s.audiosocket,
            "redis_port": s.lab_redis_port,
            "services": {},
        }
        env = dict(os.environ)
        env.update(
            VOICEOS_STATE_DIR=str(s.state_dir),
            VOICEOS_REDIS_URL=redis_url,
            VOICEOS_DASHBOARD_TOKEN=secret["dashboard_token"],
            VOICEOS_AUDIOSOCKET=s.audiosocket,
            VOICEOS_AMI_PORT=str(s.ami_port),
            VOICEOS_SIP_PORT=str(s.sip_port),
            VOICEOS_ASTERISK_HTTP_PORT=str(s.asterisk_http_port),
            # the dashboard's browser phone logs in to the PBX with this
            VOICEOS_WEBPHONE_PASSWORD=self.asterisk.webphone_password(),
            PYTHONUNBUFFERED="1",
        )
        env.pop("VOICEOS_DASHBOARD", None)
        # the lab reads its services' logs to know when they are ready
        if env.get("VOICEOS_LOG_LEVEL", "").upper() != "DEBUG":
            env["VOICEOS_LOG_LEVEL"] = "INFO"
        started = time.monotonic()
        try:
            self.say("1/5 Asterisk 22 (the managed sandbox; built the first time: about a minute)")
            self.asterisk.up()
            state["services"]["asterisk"] = {"managed": True}
            self._write_state(state)

            self.say(f"2/5 Redis on 127.0.0.1:{s.lab_redis_port}")
            redis_dir = self.dir / "redis"
            redis_dir.mkdir(exist_ok=True)
            self._spawn(
                state,
                "redis",
                [
                    "redis-server",
                    "--bind", "127.0.0.1",
                    "--port", str(s.lab_redis_port),
                    "--requirepass", secret["redis_password"],
                    "--dir", str(redis_dir),
                    "--save", "",
                    "--appendonly", "no",
                ],
                env,
            )  # fmt: skip
            self._wait("redis", state, lambda: self._redis_ready(secret["redis_password"]))

            self.say(f"3/5 the bridge ({agent}): loading its models")
            cli = [sys.executable, "-m", "voiceos_switch.cli"]
            self._spawn(
                state,
                "bridge",
                [
                    *cli, "serve", "--agent", agent,
                    "--metrics", f"127.0.0.1:{s.lab_metrics_port}",
                ],
                env,
            )  # fmt: skip
            self._wait(
                "bridge",
                state,
                lambda: "audiosocket_listening" in self._log_text("bridge"),
                BRIDGE_READY_S,
            )

            self.say("4/5 a Celery worker for the after-call analyses")
            self._spawn(state, "worker", [*cli, "worker", "--loglevel", "INFO"], env)
            self._wait("worker", state, lambda: " ready." in self._log_text("worker"))

            self.say(f"5/5 the dashboard on http://{dashboard}/")
            self._spawn(state, "dashboard", [*cli, "dashboard", "--listen", dashboard], env)
            self._wait("dashboard", state, lambda: self._http_ok(f"http://{dashboard}/login"))
        except BaseException:
            self.say("starting failed: stopping what was started")
            self.down(quiet=True)
            raise
        self.say(f"ready in {time.monotonic() - started:.0f} s")
        return state

    def _spawn(
        self, state: dict[str, Any], name: str, argv: list[str], env: dict[str, str]
    ) -> None:
        log_path = self.dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            log_file.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[:4])}\n".encode()
            )
            log_file.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        state["services"][name] = {
            "pid": proc.pid,
            "start": _start_time(proc.pid),
            "log": str(log_path),
            "log_offset": log_path.stat().st_size,
        }
        self._write_state(state)

    def _log_text(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def _wait(
        self,
        name: str,
        state: dict[str, Any],
        ready: Callable[[], bool],
        limit: float = READY_S,
    ) -> None:
        service = state["services"][name]
        started = time.monotonic()
        shown = started
        while not ready():
            if not self._alive(service):
                raise LabError(
                    f"{name} exited while starting; the end of {service['log']}:\n"
                    + self._tail(name, service.get("log_offset", 0))
                )
            now = time.monotonic()
            if now - started > limit:
                raise LabError(f"{name} was not ready after {limit:.0f} s; see {service['log']}")
            if now - shown >= 10:
                self.say(f"    {name}: still starting ({now - started:.0f} s)")
                shown = now
            time.sleep(0.2)

    def _tail(self, name: str, offset: int = 0, lines: int = 15) -> str:
        text = self._log_text(name)[offset:]
        return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])

    def _redis_ready(self, password: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.settings.lab_redis_port), 1) as sock:
                sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
                sock.settimeout(1)
                reply = b""
                while b"PONG" not in reply:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    reply += chunk
                return True
        except OSError:
            return False

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status) == 200
        except OSError:
            return False

    # status ------------------------------------------------------------------
    @staticmethod
    def _alive(service: dict[str, Any]) -> bool:
        pid = service.get("pid")
        return pid is not None and _start_time(pid) == service.get("start")

    def status(self) -> list[ServiceStatus]:
        state = self.state()
        if state is None:
            return []
        out = []
        services = state.get("services", {})
        for name in SERVICES:
            service = services.get(name)
            if service is None:
                out.append(ServiceStatus(name, "stopped"))
                continue
            if name == "asterisk":
                running = self.asterisk.running()
                out.append(
                    ServiceStatus(
                        name,
                        "running" if running else "dead",
                        where=f"SIP 127.0.0.1:{state['sip_port']}, AMI 127.0.0.1:{state['ami_port']}",
                        log=self.asterisk.log_path,
                    )
                )
                continue
            alive = self._alive(service)
            where = {
                "redis": f"127.0.0.1:{state['redis_port']}",
                "bridge": f"AudioSocket {state['audiosocket']}",
                "worker": "Celery, on the lab's Redis",
                "dashboard": state["dashboard"],
            }.get(name, "")
            last = ""
            if not alive:
                tail = self._tail(name, service.get("log_offset", 0), 1).strip()
                last = tail or "(nothing in its log)"
            out.append(
                ServiceStatus(
                    name,
                    "running" if alive else "dead",
                    service.get("pid"),
                    where,
                    Path(service["log"]),
                    last,
                )
            )
        return out

    # down --------------------------------------------------------------------
    def down(self, quiet: bool = False) -> None:
        state = self.state()
        services = state.get("services", {}) if state else {}
        for name in reversed(SERVICES):
            service = services.get(name)
            if service is None:
                continue
            if name == "asterisk":
                try:
                    self.asterisk.down()
                except AsteriskError as exc:
                    self.say(f"asterisk: {exc}")
                continue
            if self._alive(service):
                self._stop(name, service)
                if not quiet:
                    self.say(f"stopped {name}")
        self.state_path.unlink(missing_ok=True)
        if not quiet:
            held = [f"{p} ({who})" for p in lab_ports(self.settings) if (who := holder(p))]
            if held:
                self.say("still held after down: " + "; ".join(held))
            else:
                self.say("the lab is down; its ports are free")

    def _stop(self, name: str, service: dict[str, Any]) -> None:
        pid = int(service["pid"])
        # the bridge stops at once on SIGINT (SIGTERM would drain its calls)
        first = signal.SIGINT if name == "bridge" else signal.SIGTERM
        for sig, wait in ((first, 15.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self._alive(service):
                    return
                time.sleep(0.1)
            if sig != signal.SIGKILL:
                self.say(f"{name} did not stop in {wait:.0f} s: killing it")

    # call --------------------------------------------------------------------
    async def call(
        self, question: str = "Hi. What are your opening hours on Saturday?"
    ) -> CallReport:
        """A demo call from the lab carrier (see :func:`demo_call`)."""
        state = self.state()
        if state is None:
            raise LabError("the lab is not up: run `voiceos-switch lab up`")
        down = [s.name for s in self.status() if s.state != "running"]
        if down:
            raise LabError(f"{', '.join(down)} not running: see `voiceos-switch lab status`")
        return await demo_call(
            question,
            self.settings,
            keep=self.dir / "calls",
            database_url=self.settings.resolved_database_url,
            dashboard=state["dashboard"],
        )


async def demo_call(
    question: str,
    settings: Settings,
    *,
    keep: Path,
    database_url: str,
    dashboard: str,
    lab_dir: Path | None = None,
    ami_secret: str | None = None,
) -> CallReport:
    """A call from the lab carrier to number 100: the caller waits for the
    greeting, asks ``question`` (spoken by the piper voice), waits for the
    answer and hangs up. What it heard is kept in ``keep``; the bridge's
    record is read from ``database_url``. ``lab_dir``/``ami_secret``: an
    Asterisk other than the managed one (the compose lab's)."""
    from ..pbx.labcall import place_call, read_wav_mono16, write_wav
    from ..providers.tts.piper import PiperTTS
    from ..records.store import Store

    os.makedirs(keep, exist_ok=True)
    question_wav = keep / "question.wav"
    pcm = await PiperTTS(steady=True).synthesize(question, 8000)
    write_wav(question_wav, pcm, 8000)
    began = time.time()
    result = await place_call(
        "100",
        settings=settings,
        play=question_wav,
        answer_first=True,
        lab_dir=lab_dir,
        ami_secret=ami_secret,
    )
    heard_s = 0.0
    kept = None
    if result.heard is not None:
        heard_pcm, rate = read_wav_mono16(result.heard)
        heard_s = len(heard_pcm) / 2 / rate
        kept = keep / f"{result.tag}-heard.wav"
        shutil.copyfile(result.heard, kept)
    store = Store(database_url)
    record = None
    try:
        deadline = time.monotonic() + 30
        while record is None and time.monotonic() < deadline:
            for row in store.list_calls(5):
                if row["started_at"] >= began - 1 and row["caller"] == "15550100":
                    record = store.get_call(row["id"])
                    break
            else:
                await asyncio.sleep(0.3)
    finally:
        store.close()
    call_id = record["id"] if record else None
    return CallReport(
        call_id=call_id,
        answered=result.answered,
        heard_s=heard_s,
        heard=kept,
        record=record,
        hangup_cause=result.hangup_cause,
        dashboard_url=f"{dashboard}#/call/{call_id}" if call_id else "",
        turns=list(record["turns"]) if record else [],
    )

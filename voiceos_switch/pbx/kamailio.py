"""The SIP tier: Kamailio's dispatcher in front of several PBXs.

``kamailio-conf/kamailio.cfg`` is the shipped configuration (call-load
spreading, OPTIONS probing, failover on timeout or 5xx, drain over RPC).
:class:`SipProxy` renders it with a dispatcher list and runs Debian's
``kamailio`` in the foreground on loopback, for tests, benchmarks and a
lab; in production the same rendered file runs under the system's service
manager. RPC goes through ``kamcmd`` on the proxy's unix socket.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .asterisk import project_file, render
from .ports import Port, holder

MODULE_PATHS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/aarch64-linux-gnu/kamailio/modules",
    "/usr/lib/kamailio/modules",
)


class SipProxyError(RuntimeError):
    """Something a person can act on went wrong with the SIP proxy."""


@dataclass(frozen=True)
class Pbx:
    """One PBX behind the proxy: its SIP address and how many calls it takes."""

    address: str  # host:port
    max_calls: int = 0  # 0: no limit

    @property
    def uri(self) -> str:
        return f"sip:{self.address}"


def dispatcher_list(pbxs: Sequence[Pbx], setid: int = 1) -> str:
    """The dispatcher list file: one line per PBX, each with a unique id for
    call-load spreading and its limit."""
    lines = ["# setid destination flags priority attributes"]
    for n, pbx in enumerate(pbxs, 1):
        attrs = f"duid=pbx{n};maxload={pbx.max_calls}"
        # flag 8: probed from the start (a PBX that is down is never tried)
        lines.append(f"{setid} {pbx.uri} 8 0 {attrs}")
    return "\n".join(lines) + "\n"


def module_path() -> str:
    for path in MODULE_PATHS:
        if Path(path, "dispatcher.so").exists():
            return path
    raise SipProxyError("Kamailio's modules are not installed: apt-get install -y kamailio")


@dataclass
class SipProxy:
    """A Kamailio dispatching to ``pbxs``, run in the foreground."""

    workdir: Path
    pbxs: list[Pbx]
    listen: str = "127.0.0.1:5070"
    ping_interval_s: int = 2
    inactive_threshold: int = 1
    fr_timer_ms: int = 2000
    fr_inv_timer_ms: int = 30000
    children: int = 2
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def rpc_socket(self) -> Path:
        return self.workdir / "kamailio.ctl"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kamailio.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "kamailio.cfg"

    def config(self) -> str:
        values = {
            "listen": self.listen,
            "children": str(self.children),
            "module_path": module_path(),
            "rpc_socket": str(self.rpc_socket),
            "dispatcher_list": str(self.workdir / "dispatcher.list"),
            "ping_interval_s": str(self.ping_interval_s),
            "inactive_threshold": str(self.inactive_threshold),
            "fr_timer_ms": str(self.fr_timer_ms),
            "fr_inv_timer_ms": str(self.fr_inv_timer_ms),
            "log_prefix": "kamailio",
        }
        source = project_file("kamailio-conf", "kamailio.cfg")
        return render(source.read_text(), values, "kamailio.cfg")

    def write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "dispatcher.list").write_text(dispatcher_list(self.pbxs))
        self.config_path.write_text(self.config())

    def check(self) -> None:
        """Kamailio's own syntax check of the rendered configuration."""
        self.write()
        proc = subprocess.run(
            [self._binary(), "-c", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
            raise SipProxyError("kamailio -c refused the configuration:\n" + "\n".join(tail))

    @staticmethod
    def _binary() -> str:
        path = shutil.which("kamailio") or "/usr/sbin/kamailio"
        if not Path(path).exists():
            raise SipProxyError("kamailio is not installed: apt-get install -y kamailio")
        return path

    def start(self, timeout: float = 20.0) -> None:
        host, _, port = self.listen.rpartition(":")
        who = holder(Port("udp", int(port), "SIP proxy", "listen"))
        if who is not None:
            raise SipProxyError(f"{self.listen}/udp is in use by {who}")
        self.write()
        self.rpc_socket.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self._binary(), "-DD", "-E", "-f", str(self.config_path), "-Y", str(self.workdir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SipProxyError(
                    f"kamailio exited with {self.proc.returncode}:\n" + self.log_tail()
                )
            if self.rpc_socket.exists():
                try:
                    self.rpc("core.version")
                    return
                except SipProxyError:
                    pass
            time.sleep(0.1)
        raise SipProxyError(f"kamailio did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_lines(self, pattern: str) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(pattern, line)]

    # RPC ---------------------------------------------------------------------
    def rpc(self, *args: str) -> str:
        kamcmd = shutil.which("kamcmd") or "/usr/sbin/kamcmd"
        proc = subprocess.run(
            [kamcmd, "-s", f"unix:{self.rpc_socket}", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if proc.returncode != 0:
            raise SipProxyError(f"kamcmd {' '.join(args)}: {(proc.stdout + proc.stderr).strip()}")
        return proc.stdout

    def drain(self, pbx: Pbx) -> None:
        """No new calls to ``pbx``; its calls in progress go on."""
        self.rpc("dispatcher.set_state", "i", "1", pbx.uri)

    def undrain(self, pbx: Pbx) -> None:
        self.rpc("dispatcher.set_state", "ap", "1", pbx.uri)

    def states(self) -> dict[str, str]:
        """PBX URI -> dispatcher flags ("AP" active and probed, "IP" inactive, ...)."""
        out = self.rpc("dispatcher.list")
        states: dict[str, str] = {}
        uri = None
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("URI:"):
                uri = line.split(":", 1)[1].strip()
            elif line.startswith("FLAGS:") and uri is not None:
                states[uri] = line.split(":", 1)[1].strip()
                uri = None
        return states

    def wait_state(self, pbx: Pbx, active: bool, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            flags = self.states().get(pbx.uri, "")
            if flags.startswith("A") == active:
                return
            time.sleep(0.2)
        want = "active" if active else "inactive"
        raise SipProxyError(f"{pbx.uri} not {want} within {timeout:.0f} s: {self.states()}")

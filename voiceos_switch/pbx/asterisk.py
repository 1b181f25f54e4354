"""A managed, real Asterisk 22 in a sandbox root, for tests and the lab.

Asterisk 22 is in Debian sid, not in bookworm. ``up`` builds a minimal sid
root with debootstrap once (about half a minute), installs Asterisk into it,
renders our configuration into its ``/etc/asterisk``, and runs Asterisk
chrooted there. The root is cached, so later starts take about a second.
The root shares the host's network: SIP, AMI and AudioSocket meet on
loopback. Needs root privileges (debootstrap, chroot, mount).
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..settings import Settings
from .ports import Port, holder

PACKAGES = (
    "asterisk",
    "asterisk-modules",
    "asterisk-core-sounds-en-wav",
    "sox",
)
#: bump when PACKAGES or the install steps change, to rebuild cached roots
ROOT_VERSION = "1"
LAB_DIR = "/var/spool/voiceos"


class AsteriskError(RuntimeError):
    """Something a person can act on went wrong with the managed Asterisk."""


def _say(message: str) -> None:
    print(f"[asterisk] {message}", file=sys.stderr, flush=True)


def project_file(*parts: str) -> Path:
    """A file shipped beside the package (wheel) or at the repository root."""
    here = Path(__file__).resolve().parent.parent
    for base in (here / "_data", here.parent):
        candidate = base.joinpath(*parts)
        if candidate.exists():
            return candidate
    raise AsteriskError(f"cannot find {'/'.join(parts)} (looked beside {here})")


def debian_mirror() -> str:
    """The Debian archive URI from this machine's own apt sources."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in re.findall(r"^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text, re.M):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri)
    raise AsteriskError("no Debian mirror found in /etc/apt/sources*; set VOICEOS_DEBIAN_MIRROR")


class AsteriskSandbox:
    def __init__(
        self, settings: Settings | None = None, template: AsteriskSandbox | None = None
    ) -> None:
        """``template``: an installed sandbox whose root this one copies instead
        of installing its own (a second Asterisk on the same machine, with its
        own configuration, ports, logs and state)."""
        self.settings = settings or Settings()
        self.base = self.settings.asterisk_dir
        self.root = self.base / "root"
        self.template = template

    # paths -------------------------------------------------------------------
    @property
    def installed(self) -> bool:
        marker = self.root / ".voiceos-root"
        return marker.exists() and marker.read_text().strip() == ROOT_VERSION

    @property
    def log_path(self) -> Path:
        return self.root / "var/log/asterisk/messages.log"

    @property
    def lab_dir(self) -> Path:
        """The folder shared with the lab caller, as seen from the host."""
        return self.root / LAB_DIR.lstrip("/")

    def host_path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # install -----------------------------------------------------------------
    def install(self) -> None:
        if os.geteuid() != 0:
            raise AsteriskError("the managed Asterisk needs root (debootstrap, chroot, mount)")
        for tool in ("debootstrap", "chroot", "mount"):
            if shutil.which(tool) is None:
                raise AsteriskError(f"{tool} is not installed; run: apt-get install -y debootstrap")
        if self.root.exists():
            self._unmount()
            shutil.rmtree(self.root)
        if self.template is not None:
            self._copy_template(self.template)
            return
        mirror = self.settings.debian_mirror or debian_mirror()
        started = time.monotonic()
        _say(f"1/3 debootstrap Debian sid into {self.root} (about 30 s)")
        self._run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=ca-certificates",
                "sid",
                str(self.root),
                mirror,
            ],
            "debootstrap",
        )
        self._mount()
        _say("2/3 apt-get update in the root")
        self._chroot(
            ["apt-get", "-q", "-o", "Acquire::Check-Valid-Until=false", "update"], "apt-get update"
        )
        _say(f"3/3 installing {', '.join(PACKAGES)} (about 30 s)")
        self._chroot(
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                *PACKAGES,
            ],
            "apt-get install",
        )
        self._chroot(["apt-get", "clean"], "apt-get clean")
        (self.root / ".voiceos-root").write_text(ROOT_VERSION + "\n")
        _say(f"installed in {time.monotonic() - started:.0f} s")

    def _copy_template(self, template: AsteriskSandbox) -> None:
        with template._lock():
            if not template.installed:
                template.install()
            started = time.monotonic()
            _say(f"copying the root of {template.base} into {self.root}")
            self.base.mkdir(parents=True, exist_ok=True)
            # --one-file-system: not the template's mounted /proc and /dev
            self._run(
                ["cp", "-a", "--one-file-system", str(template.root), str(self.root)],
                "copying the Asterisk root",
            )
        # the template's own runtime state is not this instance's
        # (its files go; the directories, with their owners, stay)
        for sub in ("run/asterisk", "var/log/asterisk", "var/spool/asterisk", LAB_DIR):
            for path in (self.root / sub.lstrip("/")).rglob("*"):
                if path.is_file() or path.is_symlink() or path.is_socket():
                    path.unlink()
        (self.root / "var/lib/asterisk/astdb.sqlite3").unlink(missing_ok=True)
        _say(f"installed in {time.monotonic() - started:.1f} s")

    def _run(self, cmd: list[str], what: str) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise AsteriskError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))

    def _chroot(self, cmd: list[str], what: str) -> None:
        self._run(["chroot", str(self.root), *cmd], what)

    def _mounted(self, sub: str) -> bool:
        target = str((self.root / sub).resolve())
        with open("/proc/mounts") as fh:
            return any(line.split()[1] == target for line in fh)

    def _mount(self) -> None:
        if not self._mounted("proc"):
            self._run(["mount", "-t", "proc", "proc", str(self.root / "proc")], "mount proc")
        if not self._mounted("dev"):
            self._run(["mount", "--bind", "/dev", str(self.root / "dev")], "mount dev")

    def _unmount(self) -> None:
        for sub in ("dev", "proc"):
            if self._mounted(sub):
                proc = subprocess.run(["umount", str(self.root / sub)], capture_output=True)
                if proc.returncode != 0:
                    subprocess.run(["umount", "-l", str(self.root / sub)], capture_output=True)

    # configuration -----------------------------------------------------------
    def ami_secret(self) -> str:
        configured = self.settings.ami_secret
        if configured is not None:
            return configured.get_secret_value()
        return self._secret_file("ami-secret")

    def webphone_password(self) -> str:
        """The browser phone's SIP password: from settings, or made once."""
        configured = self.settings.webphone_password
        if configured is not None:
            return configured.get_secret_value()
        return self._secret_file("webphone-secret")

    def _secret_file(self, name: str) -> str:
        path = self.base / name
        if path.exists():
            return path.read_text().strip()
        secret = secrets.token_urlsafe(24)
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        return secret

    def variables(self) -> dict[str, str]:
        s = self.settings
        rtp_start, rtp_end = s.asterisk_rtp_ports.split("-")
        carrier = [f"127.0.0.1:{s.carrier_sim_port}"]
        if s.asterisk_sip_proxy:
            carrier += [p.strip() for p in s.asterisk_sip_proxy.split(",") if p.strip()]
        return {
            "bridge": s.asterisk_bridges or s.audiosocket,
            "ami_port": str(s.ami_port),
            "ami_username": s.ami_username,
            "ami_secret": self.ami_secret(),
            "sip_port": str(s.sip_port),
            "carrier_host": "127.0.0.1",
            "carrier_port": str(s.carrier_sim_port),
            "freeswitch_sip_port": str(s.lab_freeswitch_sip_port),
            "human_extension": s.human_extension,
            "http_port": str(s.asterisk_http_port),
            "webphone_user": s.webphone_user,
            "webphone_password": self.webphone_password(),
            "rtp_start": rtp_start,
            "rtp_end": rtp_end,
            "bridge_order": s.asterisk_bridge_order,
            "carrier_match": ",".join(carrier),
            "carrier_target": s.lab_carrier_target or f"127.0.0.1:{s.sip_port}",
        }

    def rendered_configs(self, lab: bool = True) -> dict[str, str]:
        """File name -> contents for /etc/asterisk, placeholders filled in."""
        values = self.variables()
        sources = sorted(project_file("asterisk-conf").glob("*.conf"))
        sources.append(project_file("dialplan", "voiceos_agent.conf"))
        if lab:
            sources += sorted(project_file("asterisk-conf", "lab").glob("*.conf"))
        out = {}
        for src in sources:
            out[src.name] = render(src.read_text(), values, src.name)
        return out

    def write_configs(self) -> bool:
        """Install the configuration; True when something changed."""
        etc = self.root / "etc/asterisk"
        uid, gid = self.asterisk_ids()
        changed = False
        for name, text in self.rendered_configs().items():
            path = etc / name
            if path.exists() and path.read_text() == text:
                continue
            path.write_text(text)
            os.chown(path, uid, gid)
            os.chmod(path, 0o640)
            changed = True
        # pbx_config warns about users.conf on every load when it exists
        (etc / "users.conf").unlink(missing_ok=True)
        lab = self.lab_dir
        lab.mkdir(parents=True, exist_ok=True)
        os.chown(lab, uid, gid)
        os.chmod(lab, 0o777)
        return changed

    def install_numbers(self, text: str) -> Path:
        """Install the per-number routes (``voiceos_numbers.conf``, included
        in the carrier context) and reload the dialplan if Asterisk runs."""
        path = self.root / "etc/asterisk/voiceos_numbers.conf"
        path.write_text(text)
        uid, gid = self.asterisk_ids()
        os.chown(path, uid, gid)
        os.chmod(path, 0o640)
        if self.running():
            self.cli("dialplan reload")
        return path

    def asterisk_ids(self) -> tuple[int, int]:
        """The asterisk user's uid and gid inside the root (numeric on the host)."""
        for line in (self.root / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == "asterisk":
                return int(fields[2]), int(fields[3])
        raise AsteriskError(
            "the root has no asterisk user; reinstall with `asterisk up --reinstall`"
        )

    # lifecycle ---------------------------------------------------------------
    def running(self) -> bool:
        if not self.installed:
            return False
        pidfile = self.root / "run/asterisk/asterisk.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def up(self, reinstall: bool = False) -> None:
        with self._lock():
            if reinstall or not self.installed:
                self.install()
            self._mount()
            changed = self.write_configs()
            if self.running():
                if not changed:
                    _say("already running, configuration unchanged")
                    return
                _say("configuration changed: restarting")
                self._stop()
            self._start()

    def _ports_free(self) -> None:
        """Refuse to start beside another PBX holding our loopback ports."""
        s = self.settings
        checks = [
            Port("udp", s.sip_port, "SIP", "VOICEOS_SIP_PORT"),
            Port("udp", s.carrier_sim_port, "lab carrier SIP", "VOICEOS_CARRIER_SIM_PORT"),
            Port("tcp", s.ami_port, "AMI", "VOICEOS_AMI_PORT"),
            Port("tcp", s.asterisk_http_port, "HTTP/WebSocket", "VOICEOS_ASTERISK_HTTP_PORT"),
        ]
        for port in checks:
            who = holder(port)
            if who is not None:
                raise AsteriskError(
                    f"127.0.0.1:{port.port} ({port.what}) is in use by {who}: is another "
                    f"Asterisk running? Stop it, or set {port.setting}"
                )

    def _start(self) -> None:
        self._ports_free()
        started = time.monotonic()
        run = self.root / "run/asterisk"
        run.mkdir(parents=True, exist_ok=True)
        uid, gid = self.asterisk_ids()
        os.chown(run, uid, gid)
        self._run(
            ["chroot", str(self.root), "asterisk", "-U", "asterisk", "-G", "asterisk"],
            "starting asterisk",
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            proc = subprocess.run(
                ["chroot", str(self.root), "asterisk", "-rx", "core waitfullybooted"],
                capture_output=True,
                text=True,
                timeout=15,
            )
            if proc.returncode == 0 and "fully booted" in proc.stdout.lower():
                _say(f"Asterisk is up ({time.monotonic() - started:.1f} s)")
                return
            time.sleep(0.1)
        raise AsteriskError(f"Asterisk did not finish booting; see {self.log_path}")

    def _stop(self) -> None:
        if not self.running():
            return
        subprocess.run(
            ["chroot", str(self.root), "asterisk", "-rx", "core stop now"],
            capture_output=True,
            timeout=15,
        )
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running():
            pid = int((self.root / "run/asterisk/asterisk.pid").read_text().strip())
            os.kill(pid, 9)

    def restart(self) -> None:
        """Stop and start with freshly rendered configuration."""
        with self._lock():
            if not self.installed:
                self.install()
            self._mount()
            self.write_configs()
            self._stop()
            self._start()

    def down(self) -> None:
        with self._lock():
            if not self.installed:
                _say("not installed; nothing to stop")
                return
            self._stop()
            self._unmount()
            _say("stopped")

    def cli(self, command: str) -> str:
        if not self.running():
            raise AsteriskError(
                "Asterisk is not running; start it with `voiceos-switch asterisk up`"
            )
        proc = subprocess.run(
            ["chroot", str(self.root), "asterisk", "-rx", command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise AsteriskError(f"asterisk -rx failed: {proc.stderr.strip()}")
        return proc.stdout

    def log_errors(self, since: int = 0) -> list[str]:
        """ERROR lines of the Asterisk log after byte offset ``since``."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(since)
                text = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if "ERROR[" in line]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0


_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def render(text: str, values: dict[str, str], name: str = "template") -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise AsteriskError(f"{name}: no value for {{{{{key}}}}}")
        value = values[key]
        if "\n" in value:
            raise AsteriskError(f"{name}: value for {key} spans lines")
        return value

    return _PLACEHOLDER.sub(sub, text)

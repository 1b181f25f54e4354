"""The lab as containers (docker-compose.yml), as a newcomer runs it.

The images are built here from Debian and PyPI packages only (the base images
are imported from debootstrap roots, the Python packages come from a wheelhouse
of this environment's pins); ``up`` brings the lab up; a scripted SIP call from
the lab carrier goes through the containerised Asterisk into the bridge, asks
the shop's hours (a fact) and something only the model answers (the LLM
server), and the caller's recording is transcribed; ``down`` removes it all.
The lab runs on ports of its own, beside the suite's managed Asterisk.

The fast test checks the file against the compose-spec schema and that no
secret has a default in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audiocheck import heard_words
from tests.docker_engine import DockerEngine, ensure_dockerd
from tests.textcheck import normalise
from tests.webget import get
from voiceos_switch.lab import images
from voiceos_switch.lab.local import Port, holder
from voiceos_switch.pbx.asterisk import LAB_DIR
from voiceos_switch.pbx.labcall import place_call, read_wav_mono16, write_wav
from voiceos_switch.records.store import Store
from voiceos_switch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROJECT = "voiceos-labtest"
#: away from the defaults the suite's own managed Asterisk (and a newcomer's lab) use
PORTS = {
    "VOICEOS_SIP_PORT": 5360,
    "VOICEOS_AMI_PORT": 5338,
    "VOICEOS_CARRIER_SIM_PORT": 5362,
    "VOICEOS_LAB_FREESWITCH_SIP_PORT": 5380,
    "VOICEOS_ASTERISK_HTTP_PORT": 8388,
    "VOICEOS_AUDIOSOCKET_PORT": 9392,
    "VOICEOS_LAB_REDIS_PORT": 6679,
    "VOICEOS_LAB_DASHBOARD_PORT": 8389,
    "VOICEOS_LAB_METRICS_PORT": 9764,
    "VOICEOS_LAB_LLM_PORT": 8300,
    "VOICEOS_LAB_PROMETHEUS_PORT": 9390,
    "VOICEOS_LAB_FREESWITCH_STREAM_PORT": 9393,
    "VOICEOS_RTP_START": 21000,
    "VOICEOS_RTP_END": 21999,
}
SERVICES = {"asterisk", "redis", "llm", "bridge", "worker", "dashboard", "prometheus"}
#: first build, then pip, apt and the model conversion inside it: well under this
BUILD_LIMIT_S = 1800.0
#: every service healthy (the bridge loads its models first)
READY_LIMIT_S = 300.0
HOURS = "Hi. What are your opening hours on Saturday?"
#: no fact answers it: the model (behind the LLM server) must
FOR_THE_MODEL = "Can you tell me a short joke?"


# the compose file, without an engine -------------------------------------------
def test_compose_file_is_compose_spec_and_no_secret_has_a_default() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    assert checker.exists(), "check-jsonschema is not installed in this environment"
    proc = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    text = COMPOSE_FILE.read_text()
    # no `version:` (docker-compose 1.29 and docker compose v2 both read it so)
    assert not re.search(r"^version\s*:", text, re.M)
    for secret in images.SECRETS:
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, f"{secret} is not used"
        # required, with a message: never a default, never optional
        assert all(use.startswith(":?") and len(use) > 2 for use in uses), (secret, uses)
    # nothing that looks like a secret written into the file itself
    assert not re.search(r"(?i)(secret|password|token)\s*[:=]\s*[A-Za-z0-9_-]{12,}\s*$", text, re.M)

    import yaml  # type: ignore[import-untyped]

    spec = yaml.safe_load(text)
    assert set(spec["services"]) == SERVICES | {"freeswitch"}
    for name, service in spec["services"].items():
        assert service.get("network_mode") == "host", name
        if "build" in service:
            assert service["build"].get("network") == "host", name
    assert spec["services"]["freeswitch"]["profiles"] == ["freeswitch"]
    assert "VOICEOS_FREESWITCH_IMAGE" in spec["services"]["freeswitch"]["image"]
    # nothing listens beyond loopback
    assert "0.0.0.0" not in text
    # the Dockerfiles start from the images `lab build` imports
    for dockerfile, base in (
        ("asterisk.Dockerfile", images.ASTERISK_BASE),
        ("python.Dockerfile", images.BOOKWORM_BASE),
        ("redis.Dockerfile", images.BOOKWORM_BASE),
        ("prometheus.Dockerfile", images.BOOKWORM_BASE),
    ):
        assert f"={base}\n" in (ROOT / "lab" / dockerfile).read_text(), dockerfile


def test_env_file_keeps_its_secrets_and_takes_new_ports(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    first = images.write_env(env)
    assert env.stat().st_mode & 0o777 == 0o600
    for secret in images.SECRETS:
        assert len(first[secret]) >= 16
    assert len({first[s] for s in images.SECRETS}) == len(images.SECRETS)
    assert first["VOICEOS_SIP_PORT"] == "5060" and first["VOICEOS_RTP_END"] == "20999"
    again = images.write_env(env, ports={"VOICEOS_SIP_PORT": 5360})
    assert {s: again[s] for s in images.SECRETS} == {s: first[s] for s in images.SECRETS}
    assert images.read_env(env)["VOICEOS_SIP_PORT"] == "5360"
    with pytest.raises(ValueError, match="not lab ports"):
        images.write_env(env, ports={"VOICEOS_SIP": 1})


# the lab in containers --------------------------------------------------------
def _clean_env() -> dict[str, str]:
    """The shell's VOICEOS_* would override the .env file: leave them out."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VOICEOS_")}


class Lab:
    def __init__(self, engine: DockerEngine, env_file: Path, data: Path) -> None:
        self.engine = engine
        self.env_file = env_file
        self.data = data
        self.values = images.read_env(env_file)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        cmd = [
            *self.engine.compose,
            "--env-file",
            str(self.env_file),
            "-p",
            PROJECT,
            "-f",
            str(COMPOSE_FILE),
            *args,
        ]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd=ROOT
        )

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.engine.docker, *args], capture_output=True, text=True, timeout=timeout
        )

    def containers(self) -> dict[str, dict[str, Any]]:
        """The project's containers by service: their state and health."""
        ids = self.docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"
        ).stdout.split()
        if not ids:
            return {}
        found = json.loads(self.docker("inspect", *ids).stdout)
        out = {}
        for c in found:
            service = c["Config"]["Labels"]["com.docker.compose.service"]
            health = c["State"].get("Health", {}).get("Status", "none")
            out[service] = {"state": c["State"]["Status"], "health": health, "name": c["Name"]}
        return out

    def logs(self, service: str) -> str:
        proc = self.compose("logs", "--no-color", service)
        return proc.stdout + proc.stderr

    def port(self, name: str) -> int:
        return int(self.values[name])


def lab_ports(values: dict[str, str]) -> list[Port]:
    tcp = (
        "VOICEOS_AMI_PORT",
        "VOICEOS_ASTERISK_HTTP_PORT",
        "VOICEOS_AUDIOSOCKET_PORT",
        "VOICEOS_LAB_REDIS_PORT",
        "VOICEOS_LAB_DASHBOARD_PORT",
        "VOICEOS_LAB_METRICS_PORT",
        "VOICEOS_LAB_LLM_PORT",
        "VOICEOS_LAB_PROMETHEUS_PORT",
    )
    udp = ("VOICEOS_SIP_PORT", "VOICEOS_CARRIER_SIM_PORT")
    return [Port("tcp", int(values[n]), n, n) for n in tcp] + [
        Port("udp", int(values[n]), n, n) for n in udp
    ]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    if os.geteuid() != 0:
        pytest.fail("the lab's images are made with debootstrap and dockerd: run as root")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    started = ensure_dockerd(log)
    yield started
    started.stop()


@pytest.fixture
def lab(engine: DockerEngine, tmp_path: Path) -> Iterator[Lab]:
    images.prepare(ROOT, Settings(), say=lambda line: print(line, flush=True))
    data = tmp_path / "data"
    data.mkdir()
    env_file = tmp_path / ".env"
    images.write_env(env_file, ports=PORTS, VOICEOS_LAB_DATA=str(data))
    lab = Lab(engine, env_file, data)
    # a lab left over from an interrupted run
    lab.compose("down", "-v", "--remove-orphans")
    yield lab
    lab.compose("down", "-v", "--remove-orphans")


def wait_healthy(lab: Lab) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + READY_LIMIT_S
    while True:
        states = lab.containers()
        if set(states) >= SERVICES and all(states[s]["health"] == "healthy" for s in SERVICES):
            return states
        bad = {s: v for s, v in states.items() if v["state"] in ("exited", "dead")}
        bad |= {s: v for s, v in states.items() if v["health"] == "unhealthy"}
        if bad or time.monotonic() > deadline:
            logs = "\n".join(f"--- {s}\n{lab.logs(s)[-3000:]}" for s in (bad or states))
            raise AssertionError(f"not healthy: {bad or states}\n{logs}")
        time.sleep(1)


async def questions(lab_dir: Path) -> str:
    """The caller's questions as files the containerised Asterisk plays, and
    the script of a caller who waits for each answer."""
    from voiceos_switch.providers.tts.piper import PiperTTS

    folder = lab_dir / "questions"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    tts = PiperTTS(steady=True)
    steps = ["heard:400", "quiet:900"]
    for name, text in (("hours", HOURS), ("model", FOR_THE_MODEL)):
        path = folder / f"{name}.wav"
        write_wav(path, await tts.synthesize(text, 8000), 8000)
        os.chmod(path, 0o644)
        steps += [f"play:{LAB_DIR}/questions/{name}", "heard:400", "quiet:2000"]
    return "|".join([*steps, "hangup"])


def stored_call(data: Path, began: float, limit: float = 30.0) -> dict[str, Any]:
    store = Store(f"sqlite:///{data / 'calls.db'}")
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for row in store.list_calls(5):
                if row["started_at"] >= began - 1 and row["caller"] == "15550100":
                    record = store.get_call(row["id"])
                    if record is not None:
                        return record
            time.sleep(0.3)
    finally:
        store.close()
    raise AssertionError(f"no record of the call in {data / 'calls.db'} after {limit:.0f} s")


@pytest.mark.integration
@pytest.mark.timeout(BUILD_LIMIT_S + READY_LIMIT_S + 600)
def test_lab_builds_comes_up_answers_a_call_and_goes(lab: Lab) -> None:
    started = time.monotonic()
    up = lab.compose("up", "-d", "--build", timeout=BUILD_LIMIT_S)
    assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
    built = time.monotonic()
    states = wait_healthy(lab)
    print(
        f"lab: built and started in {built - started:.0f} s, "
        f"healthy {time.monotonic() - built:.0f} s later",
        flush=True,
    )
    assert set(states) == SERVICES  # the freeswitch profile stays off

    # a scripted call from the lab carrier through the containerised Asterisk
    values = lab.values
    spool = lab.data / "spool"
    script = asyncio.run(questions(spool))
    began = time.time()
    result = asyncio.run(
        place_call(
            "100",
            settings=Settings(ami_port=lab.port("VOICEOS_AMI_PORT")),
            lab_dir=spool,
            ami_secret=values["VOICEOS_AMI_SECRET"],
            script=script,
            timeout=180,
        )
    )
    print(f"lab: the call took {result.duration_s:.0f} s", flush=True)
    assert result.answered and result.heard is not None, result
    assert result.hangup_cause == "Normal Clearing"
    assert result.steps[-1] == "hangup"  # the caller heard an answer to each question

    # the call's record in the shared store: every turn, the model's included
    record = stored_call(lab.data, began)
    turns = [(t["role"], t["text"]) for t in record["turns"]]
    agent_said = [text for role, text in turns if role == "agent"]
    caller_said = " ".join(text for role, text in turns if role == "caller").lower()
    assert agent_said[0] == "Hello, Acme Hardware. How can I help?", turns
    assert "hours" in caller_said and "joke" in caller_said, turns
    assert any("six in the evening" in text for text in agent_said), turns
    model_turn = agent_said[-1]
    assert model_turn.strip() and "six in the evening" not in model_turn, turns
    assert (lab.data / "recordings" / f"{record['id']}-caller.wav").exists()

    # the caller heard the greeting, the hours and the model's answer
    heard, rate = read_wav_mono16(result.heard)
    words = set(asyncio.run(heard_words(heard, rate)))
    assert {"hello", "help"} <= words, " ".join(sorted(words))
    assert {"open", "six", "evening", "saturday", "closed"} <= words, " ".join(sorted(words))
    model_words = {w for w in normalise(model_turn) if len(w) > 3}
    if model_words:
        share = len(model_words & words) / len(model_words)
        assert share >= 0.5, (model_turn, sorted(words))

    # that answer came from the LLM server, with no fallback to the embedded model
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in lab.logs("llm")
    assert "llm_fallback" not in lab.logs("bridge")

    # the dashboard shows the call behind its token, and refuses without it
    dashboard = f"http://127.0.0.1:{lab.port('VOICEOS_LAB_DASHBOARD_PORT')}"
    assert get(f"{dashboard}/api/calls")[0] == 401
    assert get(f"{dashboard}/api/calls", "not-the-token-at-all")[0] == 401
    code, body = get(f"{dashboard}/api/calls", values["VOICEOS_DASHBOARD_TOKEN"])
    assert code == 200
    assert record["id"] in {c["id"] for c in json.loads(body)["calls"]}
    # with its browser phone, pointed at the containerised Asterisk
    code, body = get(f"{dashboard}/api/phone", values["VOICEOS_DASHBOARD_TOKEN"])
    phone = json.loads(body)
    assert phone["enabled"], phone
    assert phone["ws"] == f"ws://127.0.0.1:{lab.port('VOICEOS_ASTERISK_HTTP_PORT')}/ws"
    assert phone["password"] == values["VOICEOS_WEBPHONE_PASSWORD"]
    assert get(f"{dashboard}/vendor/sip.js/index.js", values["VOICEOS_DASHBOARD_TOKEN"])[0] == 200

    # Prometheus scrapes the bridge
    query = urllib.parse.quote('up{job="voiceos-bridge"}')
    prometheus = f"http://127.0.0.1:{lab.port('VOICEOS_LAB_PROMETHEUS_PORT')}"
    deadline = time.monotonic() + 60
    while True:
        code, body = get(f"{prometheus}/api/v1/query?query={query}")
        result_json = json.loads(body) if code == 200 else {}
        series = result_json.get("data", {}).get("result", [])
        if series and series[0]["value"][1] == "1":
            break
        assert time.monotonic() < deadline, f"Prometheus does not see the bridge up: {body!r}"
        time.sleep(1)

    # the documented demo call, from the command line, into the containers
    demo = subprocess.run(
        [sys.executable, "-m", "voiceos_switch.cli", "lab", "call", "--compose"]
        + ["--project", str(lab.env_file.parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "agent: Hello, Acme Hardware. How can I help?" in demo.stdout, demo.stdout
    assert "six in the evening" in demo.stdout, demo.stdout

    # down removes it all and frees every port
    down = lab.compose("down", "-v", "--remove-orphans")
    assert down.returncode == 0, down.stdout + down.stderr
    assert lab.containers() == {}
    label = f"label=com.docker.compose.project={PROJECT}"
    assert lab.docker("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert lab.docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""
    held = [f"{p} ({who})" for p in lab_ports(values) if (who := holder(p))]
    assert held == []

"""Place a real SIP call into the agent from the lab's simulated carrier.

The managed Asterisk's ``sim-carrier`` endpoint sends a real INVITE and RTP
to the ``carrier`` trunk, as a carrier would; the caller side runs a small
script (wait, play a file, send DTMF, hang up) and records what it hears.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path

from ..audio.pcm import resample
from ..control.ami import AMIController
from ..settings import Settings
from .asterisk import LAB_DIR, AsteriskError, AsteriskSandbox


@dataclass
class LabCallResult:
    tag: str
    answered: bool
    duration_s: float
    hangup_cause: str
    heard: Path | None
    sent: Path | None
    steps: list[str] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)


def read_wav_mono16(path: Path) -> tuple[bytes, int]:
    """PCM16 mono samples and rate of a WAV file (stereo is mixed down)."""
    import numpy as np

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        data = w.readframes(w.getnframes())
    if channels > 1:
        samples = np.frombuffer(data, dtype="<i2").reshape(-1, channels).mean(axis=1)
        data = samples.astype("<i2").tobytes()
    return data, rate


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def build_script(
    play: str | None = None,
    dtmf: str | None = None,
    delay: float = 1.0,
    hold: float = 3.0,
    hangup: bool = True,
    dtmf_delay: float = 0.0,
) -> str:
    steps = []
    if delay > 0:
        steps.append(f"wait:{delay:g}")
    if play:
        steps.append(f"play:{play}")
    if dtmf and dtmf_delay > 0:
        steps.append(f"wait:{dtmf_delay:g}")
    if dtmf:
        steps.append(f"dtmf:{dtmf}")
    if hold > 0:
        steps.append(f"wait:{hold:g}")
    if hangup:
        steps.append("hangup")
    return "|".join(steps)


async def place_call(
    to: str,
    *,
    settings: Settings | None = None,
    play: Path | None = None,
    dtmf: str | None = None,
    delay: float = 1.0,
    hold: float = 3.0,
    dtmf_delay: float = 0.0,
    script: str | None = None,
    caller_id: str = "15550100",
    timeout: float = 120.0,
    pbx: str = "asterisk",
    lab_dir: Path | None = None,
    ami_secret: str | None = None,
    answer_first: bool = False,
) -> LabCallResult:
    """Call ``to`` through the carrier trunk and wait until the call ends.
    ``pbx="freeswitch"``: the same carrier calls a FreeSWITCH's ``voiceos``
    profile on this machine instead (``lab_freeswitch_sip_port``).

    By default the managed Asterisk is called. An Asterisk elsewhere on this
    machine (the lab's container) is called with ``lab_dir``, the host folder
    it sees as ``/var/spool/voiceos``, and its ``ami_secret``.

    ``answer_first``: the caller waits for the agent's greeting before it
    plays ``play``, then for the agent's answer and a pause before it hangs
    up, as a person would (each wait gives up after 60 s)."""
    if pbx not in ("asterisk", "freeswitch"):
        raise ValueError(f"pbx must be 'asterisk' or 'freeswitch', not {pbx!r}")
    trunk = "sim-carrier" if pbx == "asterisk" else "sim-carrier-fs"
    settings = settings or Settings()
    if lab_dir is None:
        sandbox = AsteriskSandbox(settings)
        if not sandbox.running():
            raise AsteriskError(
                "Asterisk is not running; start it with `voiceos-switch asterisk up`"
            )
        lab_dir = sandbox.lab_dir
        ami_secret = ami_secret or sandbox.ami_secret()
    elif ami_secret is None:
        raise ValueError("calling an Asterisk by its lab folder needs its AMI secret")
    tag = uuid.uuid4().hex[:12]
    host_dir = lab_dir / tag
    host_dir.mkdir(parents=True)
    os.chmod(host_dir, 0o777)
    inside_dir = f"{LAB_DIR}/{tag}"
    if script is None:
        play_ref = None
        if play is not None:
            pcm, rate = read_wav_mono16(play)
            write_wav(host_dir / "play.wav", resample(pcm, rate, 8000), 8000)
            play_ref = f"{inside_dir}/play"
        if answer_first:
            steps = ["heard:400", "quiet:900"]
            if play_ref:
                steps.append(f"play:{play_ref}")
            steps += ["heard:400", "quiet:2000", "hangup"]
            script = "|".join(steps)
        else:
            script = build_script(play_ref, dtmf, delay, hold, dtmf_delay=dtmf_delay)
    if "," in script:
        raise ValueError("a caller script cannot contain commas")

    ami = AMIController(settings.ami_host, settings.ami_port, settings.ami_username, ami_secret)
    events: list[dict[str, str]] = []
    answered = asyncio.Event()
    finished = asyncio.Event()
    state: dict[str, str] = {}

    def listen(event: dict[str, str]) -> None:
        name = event.get("Event")
        if name == "UserEvent" and event.get("Tag") == tag:
            events.append(event)
            state.setdefault("uniqueid", event.get("Uniqueid", ""))
            answered.set()
        elif name == "OriginateResponse" and event.get("ActionID", "").endswith(tag):
            if event.get("Response") == "Failure":
                state["cause"] = f"originate failed: {event.get('Reason', '?')}"
                finished.set()
        elif (
            name == "Hangup"
            and state.get("uniqueid")
            and event.get("Uniqueid") == state["uniqueid"]
        ):
            state["cause"] = event.get("Cause-txt", event.get("Cause", "?"))
            finished.set()

    ami.add_listener(listen)
    ami.start()
    started = time.monotonic()
    try:
        if not await ami.wait_ready(10):
            raise AsteriskError(
                f"cannot log in to the Asterisk's AMI at {settings.ami_host}:{settings.ami_port}"
            )
        await ami.action(
            {
                "Action": "Originate",
                "ActionID": f"voiceos-lab-{tag}",
                "Channel": f"PJSIP/{to}@{trunk}",
                "Context": "voiceos-caller",
                "Exten": "s",
                "Priority": "1",
                "CallerID": f"Lab caller <{caller_id}>",
                "Timeout": "15000",
                "Async": "true",
                "Variable": f"VOICEOS_SCRIPT={script},VOICEOS_DIR={inside_dir},VOICEOS_TAG={tag}",
            }
        )
        try:
            await asyncio.wait_for(finished.wait(), timeout)
        except TimeoutError:
            if state.get("uniqueid"):
                await ami.action({"Action": "Hangup", "Channel": f"/^PJSIP/{to}@{trunk}/"})
            raise AsteriskError(f"the lab call did not end within {timeout:g} s") from None
    finally:
        await ami.close()
    duration = time.monotonic() - started
    heard = await _finished_file(host_dir / "heard.wav")
    sent = await _finished_file(host_dir / "sent.wav")
    return LabCallResult(
        tag=tag,
        answered=answered.is_set(),
        duration_s=duration,
        hangup_cause=state.get("cause", "?"),
        heard=heard,
        sent=sent,
        steps=[e.get("Step", "") for e in events if e.get("Stage") == "step"],
        events=events,
    )


async def _finished_file(path: Path, wait: float = 3.0) -> Path | None:
    """MixMonitor finishes its files just after hangup: wait until they settle."""
    deadline = time.monotonic() + wait
    last = -1
    while time.monotonic() < deadline:
        size = path.stat().st_size if path.exists() else -1
        if size > 44 and size == last:
            return path
        last = size
        await asyncio.sleep(0.15)
    return path if path.exists() else None


def copy_out(src: Path | None, dst: Path | None) -> None:
    if src is not None and dst is not None:
        shutil.copyfile(src, dst)

"""FreeSWITCH fault paths, on the stand-in as the real FreeSWITCH 1.10.12
behaved: early audio before the metadata, the goodbye that must hang up,
the hand-off event a playback swallowed, transfers in the record, the last
phrase before a transfer, and every way the bridge can be missing (down,
killed, stopped, without its event socket, still loading)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from tests.freeswitch_standin import FreeSwitchStandin, StandinCall
from tests.unit.test_conversation import ScriptedLLM, ScriptedSTT
from voiceos_switch import Agent
from voiceos_switch.audio.pacer import FrameClock
from voiceos_switch.protocols import esl
from voiceos_switch.settings import Settings
from voiceos_switch.transports.audiostream import AudioStreamServer

PASSWORD = "faults-esl-password"
TOKEN = "faults-stream-token-0123456789"
#: the dialplan's fallback fires on a whole epoch second, looked at twice a second
FALLBACK_WITHIN_S = 3 + 1.0 + 0.5


def settings(tmp_path: Path, port: int, password: str = PASSWORD) -> Settings:
    return Settings(
        audiosocket="127.0.0.1:0",
        freeswitch_stream="127.0.0.1:0",
        stream_token=TOKEN,
        esl_port=port,
        esl_password=password,
        state_dir=tmp_path / "state",
        greeting="Thanks for calling. Press zero for a person.",
    )


@asynccontextmanager
async def bridge(
    tmp_path: Path, agent_of: Callable[[Settings], Agent], password: str = PASSWORD
) -> AsyncIterator[tuple[FreeSwitchStandin, Agent]]:
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    port = await standin.start()
    agent = agent_of(settings(tmp_path, port, password))
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        standin.stream_url = agent.stream_server.url()
        yield standin, agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await standin.close()


def voiced_s(heard: bytes | bytearray) -> float:
    """Seconds of sound in what the caller heard."""
    pcm = np.frombuffer(bytes(heard[: len(heard) // 2 * 2]), dtype="<i2").reshape(-1)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160).astype(np.float64)
    return float((np.sqrt((frames**2).mean(axis=1)) > 200).sum()) * 0.02


async def until(what: Callable[[], object], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"{why} (waited {timeout:g} s)")
        await asyncio.sleep(0.02)


def api_at(call: StandinCall, prefix: str) -> float:
    return next(t for t, text in call.api if text.startswith(prefix))


# --- the call's identity ---------------------------------------------------------


async def test_audio_before_the_metadata_still_reaches_the_right_call(tmp_path: Path) -> None:
    """With another media bug on the channel mod_audio_stream sends a frame
    before the metadata: the call is still bound to its own uuid and the
    caller hears the greeting."""
    async with bridge(tmp_path, lambda s: Agent(settings=s)) as (standin, agent):
        standin.audio_before_metadata = True
        calls = [await standin.place_call([], hold_s=12.0) for _ in range(3)]
        for call in calls:
            await until(lambda c=call: voiced_s(c.heard) > 1.0, 20, "the greeting never played")
            assert any(t.startswith(f"uuid_broadcast {call.uuid} ") for _, t in call.api)
        assert not any("No such channel" in e.get("_body", "") for e in standin.events_sent)


async def test_a_stream_that_never_says_which_call_is_closed_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_call(call: Any) -> None:
        raise AssertionError("no call may start without knowing which call it is")

    server = AudioStreamServer(
        on_call, TOKEN, clock=FrameClock(), playback="inject", handshake_timeout=0.5
    )
    await server.start("127.0.0.1", 0)
    try:
        async with websockets.connect(server.url()) as ws:
            for _ in range(10):
                await ws.send(bytes(320))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1008
            assert "names no call" in (ws.close_reason or "")
        assert any("<token>/<uuid>/<rate>" in r.getMessage() for r in caplog.records)
    finally:
        await server.close()


# --- the end of a call ----------------------------------------------------------------


def talking_agent(s: Settings) -> Agent:
    agent = Agent(model="local", settings=s, greeting="Hello.", reprompt_after_s=1.5)
    agent._llm, agent._stt = ScriptedLLM([]), ScriptedSTT([])
    agent._models_loaded = True  # scripted: nothing to load
    return agent


async def test_the_silence_goodbye_is_heard_whole_then_the_call_ends(tmp_path: Path) -> None:
    async with bridge(tmp_path, talking_agent) as (standin, agent):
        call = await standin.place_call([], hold_s=60.0)
        await until(lambda: call.hung_up is not None, 30, "the call was left up")
        kill = api_at(call, f"uuid_kill {call.uuid}")
        # everything the bridge sent had been played out before the kill
        assert call.plays and all(stop <= kill + 0.03 for _, stop, _ in call.plays), (
            call.plays,
            kill,
        )
        assert call.current is None and not call.queue
        assert call.routes == []  # ended, not moved to the fallback


async def test_the_last_phrase_is_heard_before_the_transfer(tmp_path: Path) -> None:
    async with bridge(tmp_path, lambda s: Agent(settings=s)) as (standin, agent):
        call = await standin.place_call([], hold_s=30.0)
        await until(lambda: voiced_s(call.heard) > 0.5, 20, "no greeting")
        pressed = call.now()
        standin.send_dtmf(call.uuid, "0")  # "Connecting you to a person."
        await until(lambda: call.transferred_to is not None, 20, "never transferred")
        moved = api_at(call, f"uuid_transfer {call.uuid} ")
        assert all(stop <= moved + 0.03 for _, stop, _ in call.plays), (call.plays, moved)
        # the phrase (in one file or a few) played in full before the move
        phrase = [(start, stop) for start, stop, _ in call.plays if start >= pressed]
        assert sum(stop - start for start, stop in phrase) > 1.0, call.plays


async def test_the_handoff_event_reaches_every_subscriber_during_playback(
    tmp_path: Path,
) -> None:
    async with bridge(tmp_path, lambda s: Agent(settings=s)) as (standin, agent):
        # another application on the event socket, listening for hand-offs
        reader, writer = await asyncio.open_connection("127.0.0.1", standin.port)
        parser = esl.Parser()

        async def read() -> list[esl.Message]:
            return parser.feed(await reader.read(65536))

        await read()
        writer.write(f"auth {PASSWORD}\n\nevent json CUSTOM voiceos::handoff\n\n".encode())
        got: list[esl.Message] = []

        call = await standin.place_call([], hold_s=30.0)
        await until(lambda: call.current is not None, 20, "no greeting playing")
        # while a playback is in progress, the agent hands the call over
        live = agent.calls[call.uuid]
        live.add_caller_text("I need a person")
        transfer = agent.transfer_to_human(live, include_transcript=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            m.content_type == "text/event-json" for m in got
        ):
            try:
                got += await asyncio.wait_for(read(), 0.5)
            except TimeoutError:
                pass
        await transfer
        events = [e for e in (m.event() for m in got) if e is not None]
        handoffs = [e for e in events if e.subclass == "voiceos::handoff"]
        assert handoffs, "the hand-off never reached the other subscriber"
        assert handoffs[0].name == "CUSTOM"
        assert handoffs[0].get("Voiceos-Call-UUID") == call.uuid
        assert "I need a person" in handoffs[0].body
        assert standin.swallowed == []  # nothing was queued on the channel
        writer.close()


async def test_every_transfer_is_in_the_call_record(tmp_path: Path) -> None:
    async with bridge(tmp_path, lambda s: Agent(settings=s)) as (standin, agent):
        calls = []
        for _ in range(3):
            call = await standin.place_call([], hold_s=30.0)
            await until(lambda c=call: voiced_s(c.heard) > 0.3, 20, "no greeting")
            standin.send_dtmf(call.uuid, "0")
            calls.append(call)
        for call in calls:
            await until(lambda c=call: c.transferred_to is not None, 20, "never transferred")
            await until(
                lambda c=call: agent.store.get_call(c.uuid) is not None, 20, "no record written"
            )
            record = agent.store.get_call(call.uuid)
            assert record["transfers"] == ["operator"], record


# --- the bridge missing -----------------------------------------------------------------


async def test_with_no_bridge_the_caller_reaches_a_person(tmp_path: Path) -> None:
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    await standin.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    standin.stream_url = f"ws://127.0.0.1:{port}/{TOKEN}"
    try:
        call = await standin.place_call([], hold_s=30.0)
        await until(lambda: call.transferred_to is not None, FALLBACK_WITHIN_S, "left parked")
        assert call.routes == ["voiceos_fallback", "operator"]
        assert any(
            e.get("Event-Subclass") == "mod_audio_stream::error" for e in standin.events_sent
        )
    finally:
        await standin.close()


async def test_without_its_event_socket_the_bridge_refuses_calls_it_cannot_play_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with bridge(tmp_path, lambda s: Agent(settings=s), password="not-the-password") as (
        standin,
        agent,
    ):
        call = await standin.place_call([], hold_s=30.0)
        await until(lambda: call.transferred_to is not None, FALLBACK_WITHIN_S, "left parked")
        assert call.routes == ["voiceos_fallback", "operator"]
        refused = [r.getMessage() for r in caplog.records if "call_refused" in r.getMessage()]
        assert refused and "event socket" in refused[0], refused
        # refused before the upgrade: FreeSWITCH's stream ends at once
        errors = [
            e["_body"]
            for e in standin.events_sent
            if e.get("Event-Subclass") == "mod_audio_stream::error"
        ]
        assert errors and "503" in errors[0], errors
        assert call.writer is None


async def test_a_call_that_comes_while_the_models_load_is_held_then_answered(
    tmp_path: Path,
) -> None:
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    port = await standin.start()
    agent = Agent(settings=settings(tmp_path, port))
    loaded = asyncio.Event()
    real_load = agent._load_models

    async def slow_load() -> None:
        await loaded.wait()
        await real_load()

    agent._load_models = slow_load  # type: ignore[method-assign]
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(agent.run(ready=ready, stop=stop, control=False))
    try:
        await until(lambda: getattr(agent, "stream_server", None) is not None, 30, "no server")
        standin.stream_url = agent.stream_server.url()
        call = await standin.place_call([], hold_s=30.0)
        await until(lambda: call.writer is not None, 10, "the stream was not accepted")
        await asyncio.sleep(4.0)  # longer than the dialplan's fallback: the bridge keeps it
        assert call.transferred_to is None and call.stream_closed is None
        loaded.set()
        await asyncio.wait_for(ready.wait(), 30)
        await until(lambda: voiced_s(call.heard) > 1.0, 20, "the held call was never answered")
    finally:
        loaded.set()
        stop.set()
        await asyncio.wait_for(task, 30)
        await standin.close()


# --- the bridge process killed or stopped -----------------------------------------------

AGENT_APP = """
from voiceos_switch import Agent
agent = Agent(greeting="Thanks for calling. This greeting goes on for a while, so that "
              "the bridge can be stopped while it plays. Press zero for a person.")
"""


@asynccontextmanager
async def bridge_process(tmp_path: Path) -> AsyncIterator[tuple[FreeSwitchStandin, Any]]:
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    esl_port = await standin.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        stream_port = s.getsockname()[1]
    (tmp_path / "faultapp.py").write_text(AGENT_APP)
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "VOICEOS_AUDIOSOCKET": "127.0.0.1:0",
        "VOICEOS_FREESWITCH_STREAM": f"127.0.0.1:{stream_port}",
        "VOICEOS_STREAM_TOKEN": TOKEN,
        "VOICEOS_ESL_PORT": str(esl_port),
        "VOICEOS_ESL_PASSWORD": PASSWORD,
        "VOICEOS_STATE_DIR": str(tmp_path / "state"),
        "VOICEOS_AMI_SECRET": "unused-ami-secret",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voiceos_switch.cli",
        "serve",
        "--agent",
        "faultapp:agent",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    standin.stream_url = f"ws://127.0.0.1:{stream_port}/{TOKEN}"
    try:
        deadline = time.monotonic() + 120
        while True:  # listening once it accepts a connection
            try:
                _, w = await asyncio.open_connection("127.0.0.1", stream_port)
                w.close()
                break
            except OSError:
                if proc.returncode is not None or time.monotonic() > deadline:
                    err = (await proc.stderr.read()).decode() if proc.stderr else ""
                    raise AssertionError(f"the bridge did not start: {err[-2000:]}") from None
                await asyncio.sleep(0.2)
        yield standin, proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await standin.close()


@pytest.mark.parametrize("how", ["killed", "stopped", "drained"])
async def test_a_bridge_that_goes_away_mid_call_leaves_no_one_in_silence(
    tmp_path: Path, how: str
) -> None:
    async with bridge_process(tmp_path) as (standin, proc):
        call = await standin.place_call([], hold_s=60.0)
        await until(lambda: call.current is not None, 60, "the greeting never played")
        await asyncio.sleep(4.0)  # past the dialplan's first fallback: the bridge keeps it
        assert call.transferred_to is None
        if how == "drained":
            # SIGTERM drains: the call stays with the agent, past the fallback
            # timer, until the bridge is stopped for good (Ctrl-C)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(4.0)
            assert call.transferred_to is None and proc.returncode is None
        gone = time.monotonic()
        proc.send_signal(signal.SIGKILL if how == "killed" else signal.SIGINT)
        await until(lambda: call.transferred_to is not None, FALLBACK_WITHIN_S, "left parked")
        took = time.monotonic() - gone
        assert call.routes == ["voiceos_fallback", "operator"]
        if how != "killed":
            assert took < 2.0, took  # handed back at once, not left to the timer

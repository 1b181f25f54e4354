"""FreeSWITCH: the ESL codec, the Event Socket controller and the
mod_audio_stream transport, against the stand-in and the captures of the
real FreeSWITCH 1.10.12 in tests/data/freeswitch."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from pathlib import Path

import pytest
import websockets
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.freeswitch_standin import FreeSwitchStandin
from voiceos_switch.audio.pacer import FrameClock
from voiceos_switch.control.esl import ESLController, ESLError
from voiceos_switch.media import AudioIn, MediaEnded
from voiceos_switch.protocols import esl
from voiceos_switch.transports.audiostream import (
    AudioStreamServer,
    StreamCall,
    StreamError,
    caller_channel,
    parse_metadata,
    path_parts,
)

DATA = Path(__file__).parent.parent / "data" / "freeswitch"
TOKEN = "test-token-0123456789abcdef"
PASSWORD = "esl-test-password"


def capture(name: str) -> list[tuple[float, str, bytes]]:
    out = []
    for line in (DATA / name).read_text().splitlines():
        m = json.loads(line)
        out.append((m["t"], m["dir"], base64.b64decode(m["b64"])))
    return out


def stream_bytes(name: str, direction: str) -> bytes:
    return b"".join(b for _, d, b in capture(name) if d == direction)


def unmask_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Client-to-server WebSocket frames (masked), from RFC 6455 section 5.2."""
    frames, i = [], 0
    while i + 2 <= len(data):
        op, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        mask, i = data[i : i + 4], i + 4
        frames.append((op, bytes(b ^ mask[k % 4] for k, b in enumerate(data[i : i + n]))))
        i += n
    return frames


# --- the codec on the real bytes ---------------------------------------------------


def test_codec_reads_a_real_freeswitch_session_in_any_chunking() -> None:
    data = stream_bytes("esl-inbound-session.jsonl", "s2c")
    whole = esl.Parser().feed(data)
    p = esl.Parser()
    pieces = [m for i in range(0, len(data), 7) for m in p.feed(data[i : i + 7])]
    assert [m.headers for m in pieces] == [m.headers for m in whole]
    kinds = [m.content_type for m in whole]
    assert kinds[:3] == ["auth/request", "command/reply", "command/reply"]
    events = [m.event() for m in whole if m.content_type == "text/event-json"]
    names = {(e.name, e.subclass) for e in events if e}
    assert ("CUSTOM", "mod_audio_stream::play") in names
    assert ("CHANNEL_HANGUP_COMPLETE", "") in names
    play = next(e for e in events if e and e.subclass == "mod_audio_stream::play")
    assert json.loads(play.body)["file"].endswith("_0.tmp.r8") and play.uuid


def test_codec_on_a_refused_password() -> None:
    msgs = esl.Parser().feed(stream_bytes("esl-wrong-password.jsonl", "s2c"))
    assert [m.content_type for m in msgs] == [
        "auth/request",
        "command/reply",
        "text/disconnect-notice",
    ]
    assert not msgs[1].ok and msgs[1].reply_text == "-ERR invalid"


def test_plain_events_are_url_decoded() -> None:
    body = (
        b"Event-Name: DTMF\nUnique-ID: abc\nCaller-Caller-ID-Name: Jane%20Doe\nDTMF-Digit: %23\n\n"
    )
    msg = esl.Parser().feed(
        b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(body) + body
    )[0]
    ev = msg.event()
    assert (
        ev is not None
        and ev.get("DTMF-Digit") == "#"
        and ev.get("Caller-Caller-ID-Name") == "Jane Doe"
    )


def test_commands_cannot_carry_a_second_command() -> None:
    with pytest.raises(ValueError, match="line break"):
        esl.encode_api("uuid_setvar x y hello\n\napi shutdown")
    assert esl.one_line("agent: hi\ncaller: bye") == "agent: hi / caller: bye"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 50))
def test_fuzzed_bytes_give_messages_or_a_protocol_error(data: bytes, step: int) -> None:
    p = esl.Parser(max_header=256, max_body=1024)
    try:
        for i in range(0, len(data), step):
            for m in p.feed(data[i : i + step]):
                try:
                    m.event()
                except esl.ProtocolError:
                    pass
    except esl.ProtocolError:
        pass


def test_oversized_bodies_and_headers_are_refused() -> None:
    with pytest.raises(esl.ProtocolError, match="over"):
        esl.Parser(max_body=100).feed(b"Content-Length: 101\n\n")
    with pytest.raises(esl.ProtocolError, match="header block"):
        esl.Parser(max_header=64).feed(b"X: " + b"a" * 100)


# --- the stream's metadata and frames --------------------------------------------


def test_the_real_stream_opens_with_our_metadata_then_20ms_frames() -> None:
    cap = capture("ws-mono8k-session.jsonl")
    handshake = cap[0][2].decode()
    assert handshake.startswith("GET /") and "User-Agent" not in handshake
    frames = unmask_frames(b"".join(b for _, d, b in cap[2:] if d == "c2s"))
    op, first = frames[0]
    assert op == 0x1
    meta = parse_metadata(first.decode())
    assert meta.rate == 8000 and meta.mix == "mono" and meta.caller == "5551234"
    audio = [p for o, p in frames[1:] if o == 0x2]
    assert len(audio) > 50 and {len(p) for p in audio} == {320}


def test_the_real_wideband_stream_over_sip_is_640_byte_frames() -> None:
    """A SIP call through the shipped `voiceos` profile to a number starting
    16: the dialplan asks for 16 kHz; the module resamples and sends 640 bytes
    per 20 ms."""
    cap = capture("ws-mono16k-sip-session.jsonl")
    frames = unmask_frames(b"".join(b for _, d, b in cap[2:] if d == "c2s"))
    meta = parse_metadata(frames[0][1].decode())
    assert meta.rate == 16000 and meta.called == "1600"
    audio = [p for o, p in frames[1:] if o == 0x2]
    assert len(audio) > 50 and {len(p) for p in audio} == {640}


def test_the_real_stream_url_names_the_call_with_another_media_bug_on_it() -> None:
    """The shipped dialplan on a channel that also runs ``record_session``:
    the URL carries the call's uuid and rate, the same as the metadata, so
    the bridge knows the call whichever message comes first (the real one
    sent the metadata first 13 times of 13 here; the bridge also takes audio
    first)."""
    cap = capture("ws-record-session-8k.jsonl")
    request_line = cap[0][2].decode().split("\r\n", 1)[0]
    path = request_line.split(" ")[1]
    frames = unmask_frames(b"".join(b for _, d, b in cap[2:] if d == "c2s"))
    meta = parse_metadata(next(p for o, p in frames if o == 0x1).decode())
    assert path_parts(path) == (meta.call_id, 8000)
    assert {len(p) for o, p in frames if o == 0x2} == {320}


def test_the_real_handoff_event_reaches_another_subscriber_whole() -> None:
    """Fired without Unique-ID, FreeSWITCH delivers the hand-off to every
    subscriber at once, with its Event-Name, the call in Voiceos-Call-UUID
    and the transcript as the body."""
    messages = esl.Parser().feed(stream_bytes("esl-handoff-subscriber.jsonl", "s2c"))
    (event,) = [e for e in (m.event() for m in messages) if e is not None]
    assert (event.name, event.subclass) == ("CUSTOM", "voiceos::handoff")
    assert event.get("Voiceos-Call-UUID") and "Unique-ID" not in event.headers
    assert event.get("Voiceos-Target") == "operator"
    assert event.body.splitlines()[-1] == "agent: Connecting you to a person."


def test_metadata_and_frame_errors_are_clear() -> None:
    with pytest.raises(StreamError, match="mixed"):
        parse_metadata('{"uuid":"a","mix":"mixed"}')
    with pytest.raises(StreamError, match="rate"):
        parse_metadata('{"uuid":"a","rate":44100}')
    with pytest.raises(StreamError, match="uuid"):
        parse_metadata("not json")
    assert parse_metadata("free text", path_call_id="x").call_id == "x"
    assert parse_metadata('{"uuid":"a","rate":"16k"}').rate == 16000
    stereo = bytes([1, 0, 2, 0, 3, 0, 4, 0])
    assert caller_channel(stereo, "stereo") == bytes([1, 0, 3, 0])
    with pytest.raises(StreamError):
        caller_channel(b"\x00\x01\x02", "mono")


# --- the stand-in against the captures -----------------------------------------------


async def test_standin_speaks_like_the_real_freeswitch(tmp_path: Path) -> None:
    """The stand-in's handshake has the real one's shape, its replies and event
    framing are the real bytes."""
    real = stream_bytes("esl-inbound-session.jsonl", "s2c")
    standin = FreeSwitchStandin(PASSWORD, f"ws://127.0.0.1:1/{TOKEN}", tmp_path)
    port = await standin.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = await reader.readuntil(b"\n\n")
    writer.write(f"auth {PASSWORD}\n\n".encode())
    got += await reader.readuntil(b"\n\n")
    writer.write(b"event json CHANNEL_ANSWER CUSTOM mod_audio_stream::connect\n\n")
    got += await reader.readuntil(b"\n\n")
    assert real.startswith(got.replace(b"CHANNEL_ANSWER CUSTOM mod_audio_stream::connect", b""))
    writer.close()
    await standin.close()

    # the WebSocket request: the same header lines, in the same order and form
    def shape(req: str) -> list[str]:
        return [re.sub(r":.*", ":", line) for line in req.split("\r\n")[1:] if line]

    real_req = capture("ws-mono8k-session.jsonl")[0][2].decode()
    ours = (
        f"GET /{TOKEN} HTTP/1.1\r\nHost:127.0.0.1:1\r\nUpgrade:websocket\r\nConnection:upgrade\r\n"
        "Sec-WebSocket-Key:x\r\nSec-WebSocket-Version:13\r\nOrigin:http://127.0.0.1:1\r\n\r\n"
    )
    assert shape(ours) == shape(real_req)
    # event framing: Content-Length before Content-Type, as FreeSWITCH writes it
    assert re.search(rb"Content-Length: \d+\nContent-Type: text/event-json\n\n\{", real)


# --- the controller -------------------------------------------------------------


async def test_wrong_password_is_a_clear_error_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    standin = FreeSwitchStandin(PASSWORD, f"ws://127.0.0.1:1/{TOKEN}", tmp_path)
    port = await standin.start()
    ctl = ESLController("127.0.0.1", port, "wrong", max_backoff=0.2)
    with caplog.at_level(logging.ERROR):
        ctl.start()
        assert not await ctl.wait_ready(1.0)
    assert "refused the password" in (ctl.last_error or "")
    assert "VOICEOS_ESL_PASSWORD" in caplog.text
    with pytest.raises(ESLError, match="not connected"):
        await ctl.api("status")
    await ctl.close()
    await standin.close()


async def test_a_dropped_event_socket_reconnects(tmp_path: Path) -> None:
    standin = FreeSwitchStandin(PASSWORD, f"ws://127.0.0.1:1/{TOKEN}", tmp_path)
    port = await standin.start()
    ctl = ESLController("127.0.0.1", port, PASSWORD, max_backoff=0.3)
    ctl.start()
    assert await ctl.wait_ready(2)
    assert "Command not found" in str(await _api_error(ctl, "nonsense"))
    standin.drop_event_sockets()
    await asyncio.sleep(0.1)
    assert await ctl.wait_ready(3) and ctl.connects == 2
    with pytest.raises(ESLError, match="No such channel"):
        await ctl.api("uuid_break 123 all")
    await ctl.close()
    await standin.close()


async def _api_error(ctl: ESLController, cmd: str) -> ESLError:
    try:
        await ctl.api(cmd)
    except ESLError as exc:
        return exc
    raise AssertionError("no error")


# --- the transport ----------------------------------------------------------------


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.calls: list[StreamCall] = []
        self.ended: list[MediaEnded] = []
        self.audio: dict[str, bytearray] = {}

    async def on_call(self, call: StreamCall) -> None:
        self.calls.append(call)
        self.audio[call.call_id] = bytearray()
        async for ev in call.events():
            if isinstance(ev, AudioIn):
                self.audio[call.call_id] += ev.pcm
            elif isinstance(ev, MediaEnded):
                self.ended.append(ev)


async def _setup(
    tmp_path: Path,
) -> tuple[FreeSwitchStandin, ESLController, AudioStreamServer, Harness]:
    h = Harness(tmp_path)
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    port = await standin.start()
    ctl = ESLController("127.0.0.1", port, PASSWORD)
    ctl.start()
    assert await ctl.wait_ready(2)
    server = AudioStreamServer(h.on_call, TOKEN, clock=FrameClock(), control=ctl)
    await server.start("127.0.0.1", 0)
    standin.stream_url = server.url()
    return standin, ctl, server, h


async def _teardown(
    standin: FreeSwitchStandin, ctl: ESLController, server: AudioStreamServer
) -> None:
    await server.close()
    await ctl.close()
    await standin.close()


async def test_audio_both_ways_barge_in_and_hangup(tmp_path: Path) -> None:
    standin, ctl, server, h = await _setup(tmp_path)
    try:
        voice = bytes(range(256)) * 25  # 0.4 s of a pattern the bridge must receive intact
        call = await standin.place_call([(0.2, voice)], hold_s=3.0)
        for _ in range(100):
            if h.calls:
                break
            await asyncio.sleep(0.02)
        media = h.calls[0]
        assert media.call_id == call.uuid and media.caller == "5551234"
        # the agent speaks 1.5 s; it is played through files and uuid_broadcast
        tone = (b"\x00\x10" * 8000 * 3)[: 8000 * 2 * 3 // 2]
        playout = media.send_audio(tone)
        await asyncio.sleep(0.7)
        assert call.plays == [] and call.current is not None  # playing now
        media.clear()  # barge-in
        await asyncio.sleep(0.2)
        assert call.broken >= 1 and call.current is None
        assert playout.interrupted and 0 < playout.sent < playout.frames
        heard_s = len(call.heard.rstrip(b"\x00")) / 16000
        assert 0.4 < heard_s < 1.2  # cut where the break came, not at the end
        await asyncio.wait_for(call.done.wait(), 5)
        assert voice in bytes(h.audio[call.uuid])
        for _ in range(100):
            if h.ended:
                break
            await asyncio.sleep(0.02)
        assert h.ended and not h.ended[0].error, h.ended
        assert any(e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" for e in standin.events_sent)
    finally:
        await _teardown(standin, ctl, server)


async def test_pause_then_resume_loses_nothing(tmp_path: Path) -> None:
    standin, ctl, server, h = await _setup(tmp_path)
    try:
        call = await standin.place_call([], hold_s=4.0)
        for _ in range(100):
            if h.calls:
                break
            await asyncio.sleep(0.02)
        media = h.calls[0]
        audio = b"\x00\x08" * 8000  # 1 s
        playout = media.send_audio(audio)
        await asyncio.sleep(0.5)
        media.pause_output()
        await asyncio.sleep(0.3)
        media.resume_output()
        assert await asyncio.wait_for(playout.wait(), 5)
        await asyncio.sleep(0.3)
        played = sum(len(Path(p).name) > 0 and (stop - start) for start, stop, p in call.plays)
        assert 0.9 < played < 1.3  # the whole second, once
    finally:
        await _teardown(standin, ctl, server)


async def test_unauthenticated_streams_are_refused(tmp_path: Path) -> None:
    standin, ctl, server, h = await _setup(tmp_path)
    try:
        assert server.address is not None
        host, port = server.address
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"ws://{host}:{port}/wrong-token-0123456789"):
                pass
        assert info.value.response.status_code == 401
        assert server.stats["refused"] == 1 and not h.calls
    finally:
        await _teardown(standin, ctl, server)


async def test_a_stream_that_dies_ends_its_call_only(tmp_path: Path) -> None:
    standin, ctl, server, h = await _setup(tmp_path)
    try:
        a = await standin.place_call([], hold_s=5.0)
        b = await standin.place_call([], hold_s=2.0)
        for _ in range(100):
            if len(h.calls) == 2:
                break
            await asyncio.sleep(0.02)
        assert a.writer is not None
        a.writer.transport.abort()  # the connection drops without a close frame
        await asyncio.sleep(0.3)
        ended = {c.call_id: c.end_reason for c in h.calls}
        assert ended[a.uuid] is not None and ended[a.uuid].error
        assert ended[b.uuid] is None  # the other call goes on
        await asyncio.wait_for(b.done.wait(), 5)
        assert len(h.audio[b.uuid]) >= 16000 * 2 * 0.8  # its 2 s of frames kept coming
    finally:
        await _teardown(standin, ctl, server)


async def test_outbound_standin_matches_the_real_exchange(tmp_path: Path) -> None:
    """The real outbound session (FreeSWITCH's ``socket`` app calling the
    bridge): the stand-in's connect reply, command replies and lingering
    disconnect notice have the same messages and header names."""
    # in this capture FreeSWITCH is the connecting side ("c2s")
    real = esl.Parser().feed(stream_bytes("esl-outbound-session.jsonl", "c2s"))
    sent = [b for _, d, b in capture("esl-outbound-session.jsonl") if d == "s2c"]
    assert sent[:3] == [b"connect\n\n", b"myevents json\n\n", b"linger\n\n"]
    real_connect = real[0]
    assert real_connect.headers["Reply-Text"] == "%2BOK%0A"  # URL-encoded, unlike any other reply
    assert real_connect.headers["Event-Name"] == "CHANNEL_DATA"
    notice = real[-1]
    assert notice.content_type == "text/disconnect-notice"

    got: list[bytes] = []

    async def bridge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for command in (b"connect\n\n", b"myevents json\n\n", b"linger\n\n"):
            writer.write(command)
            got.append(await reader.readuntil(b"\n\n"))
        got.append(await reader.read())  # events, then the notice at hangup

    server = await asyncio.start_server(bridge, "127.0.0.1", 0)
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    try:
        port = server.sockets[0].getsockname()[1]
        call = await standin.place_call([], hold_s=1.0, outbound=("127.0.0.1", port))
        await asyncio.sleep(0.3)
        await standin.hang_up(call.uuid)
        await asyncio.sleep(0.2)
    finally:
        server.close()
        await standin.close()
    ours = esl.Parser().feed(b"".join(got))
    connect = ours[0]
    assert connect.headers["Reply-Text"] == real_connect.headers["Reply-Text"]
    needed = [
        "Event-Name",
        "Unique-ID",
        "Caller-Caller-ID-Number",
        "Caller-Destination-Number",
        "Answer-State",
        "Content-Type",
        "Socket-Mode",
        "Control",
    ]
    assert all(k in real_connect.headers and k in connect.headers for k in needed)
    assert [m.reply_text for m in ours[1:3]] == [m.reply_text for m in real[1:3]]
    assert list(ours[-1].headers) == list(notice.headers)


async def test_outbound_event_socket_starts_the_stream_and_plays(tmp_path: Path) -> None:
    """The dialplan's ``socket ... async full`` variant: no inbound event
    socket at all; the call's own connection starts the stream and plays."""
    h = Harness(tmp_path)
    standin = FreeSwitchStandin(PASSWORD, "", tmp_path)
    await standin.start()
    ctl = ESLController("127.0.0.1", 1, None)  # outbound only
    server = AudioStreamServer(h.on_call, TOKEN, clock=FrameClock(), control=ctl)
    await server.start("127.0.0.1", 0)
    try:
        host, port = await ctl.serve_outbound("127.0.0.1", 0, server.url)
        call = await standin.place_call([], hold_s=2.5, outbound=(host, port))
        for _ in range(100):
            if h.calls:
                break
            await asyncio.sleep(0.02)
        media = h.calls[0]
        assert media.call_id == call.uuid and ctl.channels[call.uuid].caller == "5551234"
        assert await asyncio.wait_for(media.send_audio(b"\x00\x08" * 8000).wait(), 5)
        await asyncio.wait_for(call.done.wait(), 5)
        assert standin.commands[:3] == ["connect", "myevents json", "linger"]
        assert any(c.startswith("api uuid_broadcast") for c in standin.commands)
        # the call's fallback is kept up over its own connection too
        assert any(
            c.startswith(f"api sched_api +3 voiceos-fallback-{call.uuid}") for c in standin.commands
        )
        played = sum(stop - start for start, stop, _ in call.plays)
        assert 0.9 < played < 1.2
        for _ in range(50):
            if call.uuid not in ctl._outbound:
                break
            await asyncio.sleep(0.02)
        assert call.uuid not in ctl._outbound  # the lingering socket closed after the hangup
    finally:
        await server.close()
        await ctl.close()
        await standin.close()

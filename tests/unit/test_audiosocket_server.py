"""The AudioSocket server over real loopback sockets: good calls and bad peers."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import struct
import tracemalloc
import uuid

import pytest

from voiceos_switch.media import AudioIn, DtmfIn, MediaEnded
from voiceos_switch.protocols import audiosocket as p
from voiceos_switch.transports.audiosocket import AudioSocketCall, AudioSocketServer


class Peer:
    """A minimal Asterisk stand-in: connects, sends frames, reads ours."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parser = p.Parser()

    @classmethod
    async def connect(cls, addr: tuple[str, int]) -> Peer:
        return cls(*await asyncio.open_connection(*addr))

    def send(self, *frames: p.Frame) -> None:
        self.writer.write(b"".join(p.encode(f) for f in frames))

    async def read_frames(self, n: int, timeout: float = 5.0) -> list[p.Frame]:
        out: list[p.Frame] = []
        while len(out) < n:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                break
            out += self.parser.feed(data)
        return out

    async def closed(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True


class Recorder:
    """An agent that records what each call delivered."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.calls: dict[str, list[object]] = {}
        self.reply = reply
        self.started = asyncio.Event()

    async def __call__(self, call: AudioSocketCall) -> None:
        events = self.calls.setdefault(call.call_id, [])
        self.started.set()
        if self.reply:
            call.send_audio(self.reply)
        async for ev in call.events():
            events.append(ev)


@pytest.fixture
async def server() -> AudioSocketServer:
    rec = Recorder(reply=b"\x05\x00" * 800)
    srv = AudioSocketServer(rec, handshake_timeout=0.5, max_frame_bytes=4096)
    srv.agent = rec  # type: ignore[attr-defined]
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.close()


def audio(i: int, rate: int = 8000) -> p.Audio:
    return p.Audio(i.to_bytes(2, "little") * (rate // 50), rate)


async def test_a_call_in_both_directions(server: AudioSocketServer) -> None:
    cid = uuid.uuid4()
    peer = await Peer.connect(server.address)
    peer.send(p.CallId(cid), *[audio(i) for i in range(5)], p.Dtmf("7"))
    frames = await peer.read_frames(10)
    sent = [f for f in frames if isinstance(f, p.Audio)]
    assert all(f.sample_rate == 8000 and len(f.pcm) == 320 for f in sent)
    # the agent's 800 samples = 5 frames of audio, then silence
    assert [f.pcm[:2] for f in sent[:5]] == [b"\x05\x00"] * 5
    assert sent[5].pcm == bytes(320)
    peer.send(p.Hangup())
    assert await peer.closed()
    await asyncio.sleep(0.05)
    events = server.agent.calls[str(cid)]  # type: ignore[attr-defined]
    assert [e.pcm for e in events if isinstance(e, AudioIn)] == [audio(i).pcm for i in range(5)]
    assert [e for e in events if isinstance(e, DtmfIn)] == [DtmfIn("7")]
    assert isinstance(events[-1], MediaEnded) and events[-1].reason == "remote sent hangup"
    assert server.stats.active_calls == 0


async def test_rate_follows_the_first_audio_frame(server: AudioSocketServer) -> None:
    peer = await Peer.connect(server.address)
    peer.send(p.CallId(uuid.uuid4()), audio(1, 16000))
    frames = await peer.read_frames(3)
    assert {(f.sample_rate, len(f.pcm)) for f in frames if isinstance(f, p.Audio)} == {(16000, 640)}
    peer.writer.close()


@pytest.mark.parametrize("end", ["eof", "hangup", "error", "reset"])
async def test_every_kind_of_end_finishes_the_call(server: AudioSocketServer, end: str) -> None:
    cid = uuid.uuid4()
    peer = await Peer.connect(server.address)
    peer.send(p.CallId(cid), audio(1))
    await peer.read_frames(1)
    if end == "eof":
        peer.writer.write_eof()
    elif end == "hangup":
        peer.send(p.Hangup())
    elif end == "error":
        peer.send(p.Error(3))
    else:  # a TCP reset: linger 0 makes close() send RST
        sock = peer.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.writer.transport.abort()
    for _ in range(100):
        if server.stats.active_calls == 0 and not server.tasks:
            break
        await asyncio.sleep(0.01)
    assert server.stats.active_calls == 0 and not server.tasks
    events = server.agent.calls[str(cid)]  # type: ignore[attr-defined]
    assert isinstance(events[-1], MediaEnded)
    assert events[-1].error == (end == "error")
    expected = {
        "eof": "remote hung up",
        "hangup": "remote sent hangup",
        "error": "remote sent error frame (code 0x03)",
        "reset": "connection reset",
    }
    assert events[-1].reason == expected[end]


async def test_agent_hangup_sends_a_hangup_frame_then_closes() -> None:
    async def agent(call: AudioSocketCall) -> None:
        await call.hangup()

    srv = AudioSocketServer(agent)
    await srv.start("127.0.0.1", 0)
    peer = await Peer.connect(srv.address)
    peer.send(p.CallId(uuid.uuid4()), audio(1))
    frames = await peer.read_frames(100)
    assert isinstance(frames[-1], p.Hangup)
    await srv.close()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x42\x00\x00", "unknown frame kind 0x42"),
        (b"\x10\xff\xff" + bytes(100), "over the 4096-byte limit"),
        (p.encode(audio(1)), "audio before the call id"),
        (bytes(range(256)) * 4, "protocol error"),
    ],
)
async def test_bad_input_closes_that_connection_with_one_log_line(
    server: AudioSocketServer, payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = await Peer.connect(server.address)
    good_id = uuid.uuid4()
    good.send(p.CallId(good_id), audio(1))
    await good.read_frames(2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="voiceos_switch"):
        bad = await Peer.connect(server.address)
        bad.writer.write(payload)
        assert await bad.closed()
        await asyncio.sleep(0.05)
    lines = [r for r in caplog.records if "connection_closed" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0].getMessage()
    # the good call is unaffected: still paced frames, still accepting audio
    good.send(audio(2))
    frames = await good.read_frames(5)
    assert len(frames) >= 5
    assert server.stats.active_calls == 1
    good.writer.close()


async def test_half_a_frame_then_disconnect_is_one_clear_error(
    server: AudioSocketServer, caplog: pytest.LogCaptureFixture
) -> None:
    cid = uuid.uuid4()
    peer = await Peer.connect(server.address)
    peer.send(p.CallId(cid))
    peer.writer.write(p.encode(audio(1))[:100])
    await asyncio.sleep(0.05)
    peer.writer.write_eof()
    await asyncio.sleep(0.1)
    ended = server.agent.calls.get(str(cid), [])  # type: ignore[attr-defined]
    assert ended and isinstance(ended[-1], MediaEnded)
    assert "inside a frame" in ended[-1].reason and ended[-1].error


async def test_a_thousand_silent_connections_are_closed_and_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Recorder(reply=b"\x01\x00" * 160)
    # (a connection before its call id holds a place under the limit)
    srv = AudioSocketServer(rec, handshake_timeout=2.0, max_calls=2000)
    await srv.start("127.0.0.1", 0)
    good = await Peer.connect(srv.address)
    good.send(p.CallId(uuid.uuid4()), audio(1))
    await good.read_frames(1)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    with caplog.at_level(logging.WARNING, logger="voiceos_switch"):
        idle = await asyncio.gather(*[Peer.connect(srv.address) for _ in range(1000)])
        for _ in range(100):
            if srv.stats.active_connections == 1001:
                break
            await asyncio.sleep(0.01)
        assert srv.stats.active_connections == 1001
        # meanwhile the real call keeps its pace
        t0 = asyncio.get_running_loop().time()
        got = await good.read_frames(50)
        elapsed = asyncio.get_running_loop().time() - t0
        assert len(got) >= 50 and elapsed < 1.5
        closed = await asyncio.gather(*[peer.closed(5.0) for peer in idle])
    assert all(closed)
    timeouts = [r for r in caplog.records if "no call id within 2 s" in r.getMessage()]
    assert len(timeouts) == 1000
    for peer in idle:
        peer.writer.close()
    del idle, closed, timeouts
    caplog.clear()
    await asyncio.sleep(0.1)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    assert srv.stats.handshake_timeouts == 1000
    assert srv.stats.active_connections == 1 and len(srv._live) == 1
    assert len(srv.tasks) == 1  # only the good call
    growth = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert growth < 2_000_000, f"{growth} bytes retained after 1000 dead connections"
    good.writer.close()
    await srv.close()


async def test_max_calls_refuses_extra_connections() -> None:
    rec = Recorder()
    srv = AudioSocketServer(rec, max_calls=1)
    await srv.start("127.0.0.1", 0)
    first = await Peer.connect(srv.address)
    first.send(p.CallId(uuid.uuid4()), audio(1))
    await first.read_frames(1)
    second = await Peer.connect(srv.address)
    assert await second.closed()
    assert srv.stats.refused == 1
    first.writer.close()
    await srv.close()


async def test_two_connects_at_once_cannot_both_pass_the_limit() -> None:
    rec = Recorder()
    srv = AudioSocketServer(rec, max_calls=1)
    await srv.start("127.0.0.1", 0)
    # both connect before either has sent its call id (a PBX placing two
    # calls in the same millisecond)
    a, b = await asyncio.gather(Peer.connect(srv.address), Peer.connect(srv.address))
    for peer in (a, b):
        peer.send(p.CallId(uuid.uuid4()), audio(1))
    for _ in range(300):
        if srv.stats.refused + srv.stats.calls == 2:
            break
        await asyncio.sleep(0.01)
    assert srv.stats.refused == 1 and srv.stats.calls == 1
    for peer in (a, b):
        peer.writer.close()
    await srv.close()


async def test_a_peer_that_stops_reading_is_dropped_not_buffered_forever() -> None:
    rec = Recorder()
    srv = AudioSocketServer(rec, max_send_buffer_ms=200)
    await srv.start("127.0.0.1", 0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(srv.address)
    sock.setblocking(False)
    peer = Peer(*await asyncio.open_connection(sock=sock))
    peer.writer.transport.pause_reading()
    # 192 kHz: 7.7 kB every 20 ms, so the kernel buffers fill within seconds
    peer.send(p.CallId(uuid.uuid4()), audio(1, 192000))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if srv._live and next(iter(srv._live)).call is not None and rec.calls:
            break
    call = next(iter(srv._live)).call
    assert call is not None
    call.send_audio(b"\x01\x00" * 192000 * 60)
    for _ in range(1500):
        if srv.stats.slow_peers:
            break
        await asyncio.sleep(0.01)
    assert srv.stats.slow_peers == 1 and call.ended
    assert "not reading" in call.end_reason.reason  # type: ignore[union-attr]
    await srv.close()

"""Asterisk AudioSocket server: many calls in one asyncio process.

Each TCP connection is one call. Asterisk sends the call id first, then audio
(and DTMF) frames; we answer with paced audio and, at the end, a hangup
frame. Bad input closes that one connection with one log line.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .. import log
from ..audio.pacer import FrameClock, Pacer, Playout
from ..audio.pcm import StreamResampler, frame_bytes
from ..media import AudioIn, DtmfIn, MediaEnded, MediaEvent
from ..protocols import audiosocket as proto
from .inbox import CallRecording, Inbox, InboxMedia, run_agent, silent_playout

logger = log.get(__name__)

#: How long a new call waits for its first audio frame to learn the rate
#: (8 kHz from ``AudioSocket()``, 16 kHz from ``Dial(AudioSocket/..c(slin16))``).
#: Asterisk's Answer() holds media up to 500 ms for the caller's first RTP.
RATE_PROBE_S = 1.0


@dataclass
class ServerStats:
    connections: int = 0
    calls: int = 0
    active_connections: int = 0
    active_calls: int = 0
    #: connections taken towards the limit (calls, and connections still
    #: before their call id: two PBX connects at once cannot both slip in)
    admitted: int = 0
    protocol_errors: int = 0
    handshake_timeouts: int = 0
    refused: int = 0
    slow_peers: int = 0


class AudioSocketCall(InboxMedia):
    """One AudioSocket call: implements :class:`voiceos_switch.media.CallMedia`."""

    pbx = "asterisk"

    def __init__(self, conn: _Connection, call_uuid: uuid.UUID) -> None:
        self._conn = conn
        self.call_id = str(call_uuid)
        self.sample_rate = 8000
        self.started_at = time.time()
        self._inbox = Inbox()
        self._pacer: Pacer | None = None
        self._ended: MediaEnded | None = None
        self.frames_in = 0
        self.dtmf_in = 0

    # CallMedia -------------------------------------------------------------
    def send_audio(self, pcm: bytes) -> Playout:
        if self._pacer is None:
            raise RuntimeError("call media is not started yet")
        if self._ended is not None:
            return silent_playout()
        return self._pacer.enqueue(pcm)

    def clear(self) -> int:
        return self._pacer.clear() if self._pacer is not None else 0

    def pause_output(self) -> None:
        if self._pacer is not None:
            self._pacer.pause()

    def resume_output(self) -> None:
        if self._pacer is not None:
            self._pacer.resume()

    async def hangup(self) -> None:
        await self.finish_playing()
        self._conn.hangup("agent hung up")

    async def finish_playing(self, timeout: float = 30.0) -> None:
        # Asterisk plays each frame as it arrives: sent is heard
        pacer = self._pacer
        if pacer is None:
            return
        deadline = time.monotonic() + min(timeout, pacer.queued_frames * 0.02 + 1.0)
        while time.monotonic() < deadline:
            if not pacer.speaking or self._ended is not None:
                return
            await asyncio.sleep(0.02)

    def monitor_output(self, callback: Callable[[bytes, float], None]) -> None:
        if self._pacer is not None:
            self._pacer.monitor = callback

    @property
    def speaking(self) -> bool:
        return self._pacer is not None and self._pacer.speaking

    @property
    def pacer(self) -> Pacer | None:
        return self._pacer

    # transport side --------------------------------------------------------
    def _start_media(self, sample_rate: int, pacer: Pacer) -> None:
        self.sample_rate = sample_rate
        self._pacer = pacer

    def _push(self, event: MediaEvent) -> None:
        self._inbox.put(event)

    def _finish(self, ended: MediaEnded) -> None:
        if self._ended is None:
            self._ended = ended
            if self._pacer is not None:
                self._pacer.clear()
            self._inbox.put(ended)


CallHandler = Callable[[AudioSocketCall], Awaitable[None]]


class _Connection(asyncio.Protocol):
    def __init__(self, server: AudioSocketServer) -> None:
        self.server = server
        self.parser = proto.Parser(max_payload=server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.call: AudioSocketCall | None = None
        self.peer = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._admitted = False
        self._pacer: Pacer | None = None
        self._send_limit = 0
        self._recording: CallRecording | None = None
        self._resampler: StreamResampler | None = None

    # asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        srv = self.server
        srv.stats.connections += 1
        srv.stats.active_connections += 1
        srv._live.add(self)
        if srv.draining:
            srv.stats.refused += 1
            self._fail("refused: the bridge is draining")
            return
        if srv.stats.admitted >= srv.max_calls:
            srv.stats.refused += 1
            self._fail(f"refused: {srv.max_calls} calls already active")
            return
        srv.stats.admitted += 1
        self._admitted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(srv.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            frames = self.parser.feed(data)
        except proto.ProtocolError as exc:
            self.server.stats.protocol_errors += 1
            self._fail(f"protocol error: {exc}")
            return
        for frame in frames:
            if self._closed:
                return
            self._handle(frame)

    def eof_received(self) -> bool:
        if self.parser.buffered:
            self._end(f"connection closed inside a frame ({self.parser.buffered} bytes)", True)
        else:
            self._end("remote hung up", False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closed:
            # a reset ends a call as plainly as EOF does (Asterisk may do either)
            if exc is None or isinstance(exc, ConnectionResetError):
                self._end("remote hung up" if exc is None else "connection reset", False)
            else:
                self._end(f"connection lost: {exc}", True)
        self.server.stats.active_connections -= 1
        if self._admitted:
            self._admitted = False
            self.server.stats.admitted -= 1
        self.server._live.discard(self)

    # frames ----------------------------------------------------------------
    def _handle(self, frame: proto.Frame) -> None:
        call = self.call
        if isinstance(frame, proto.Audio):
            if call is None:
                self.server.stats.protocol_errors += 1
                self._fail("protocol error: audio before the call id")
                return
            if self._pacer is None:
                self._start(frame.sample_rate)
            pcm = frame.pcm
            if frame.sample_rate != call.sample_rate:
                pcm = self._convert_inbound(pcm, frame.sample_rate, call.sample_rate)
            call.frames_in += 1
            if self._recording is not None:
                self._recording.inbound(pcm)
            call._push(AudioIn(pcm))
        elif isinstance(frame, proto.Dtmf):
            if call is None:
                self._fail("protocol error: DTMF before the call id")
                return
            call.dtmf_in += 1
            logger.info(log.kv(event="dtmf", digit=frame.digit), extra={"call_id": call.call_id})
            call._push(DtmfIn(frame.digit))
        elif isinstance(frame, proto.CallId):
            if call is not None:
                self.server.stats.protocol_errors += 1
                self._fail("protocol error: a second call id on one connection")
                return
            self._begin(frame.id)
        elif isinstance(frame, proto.Hangup):
            self._end("remote sent hangup", False)
        elif isinstance(frame, proto.Error):
            code = "none" if frame.code is None else f"0x{frame.code:02x}"
            self._end(f"remote sent error frame (code {code})", True)

    def _begin(self, call_uuid: uuid.UUID) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.call = AudioSocketCall(self, call_uuid)
        self.server.stats.calls += 1
        self.server.stats.active_calls += 1
        logger.info(
            log.kv(event="call_connected", peer=self.peer), extra={"call_id": self.call.call_id}
        )
        hint = self.server.rate_hint(self.call.call_id) if self.server.rate_hint else None
        if hint in proto.RATE_KINDS:
            self._start(hint)  # the PBX told the control plane; no need to wait
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(RATE_PROBE_S, self._start, 8000)

    def _start(self, sample_rate: int) -> None:
        """Rate known: start the pacer and hand the call to the agent."""
        if self._pacer is not None or self.call is None or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        call = self.call
        self._send_limit = frame_bytes(sample_rate, self.server.max_send_buffer_ms)
        self._pacer = Pacer(sample_rate, self._write_frame, self.server.lead_frames)
        call._start_media(sample_rate, self._pacer)
        if self.server.recorder is not None:
            try:
                self._recording = self.server.recorder(call.call_id, sample_rate)
            except OSError as exc:
                logger.error(
                    log.kv(event="recording_failed", error=exc), extra={"call_id": call.call_id}
                )
        self.server.clock.add(self._pacer)
        self.server._dispatch(call)

    def _convert_inbound(self, pcm: bytes, src: int, dst: int) -> bytes:
        """The PBX changed its rate mid-call: keep the call's rate, resample."""
        rs = self._resampler
        if rs is None or rs.src_rate != src:
            assert self.call is not None
            logger.info(
                log.kv(event="inbound_rate_changed", src_hz=src, call_hz=dst),
                extra={"call_id": self.call.call_id},
            )
            rs = self._resampler = StreamResampler(src, dst)
        return rs.process(pcm)

    def _write_frame(self, pcm: bytes) -> None:
        transport = self.transport
        if transport is None or self._closed or self.call is None:
            return
        if transport.get_write_buffer_size() > self._send_limit:
            self.server.stats.slow_peers += 1
            self._fail("peer is not reading: send buffer over the limit")
            return
        transport.write(proto.encode_audio(pcm, self.call.sample_rate))
        if self._recording is not None:
            self._recording.outbound(pcm)

    # endings ---------------------------------------------------------------
    def _handshake_expired(self) -> None:
        self.server.stats.handshake_timeouts += 1
        self._fail(f"no call id within {self.server.handshake_timeout:g} s")

    def hangup(self, reason: str) -> None:
        """Our side ends the call: a hangup frame, then close."""
        if self._closed:
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(proto.encode(proto.Hangup()))
            self.transport.close()
        self._end(reason, False)

    def _fail(self, reason: str) -> None:
        """Bad input: one log line, drop this connection only."""
        if self._closed:
            return
        call_id = self.call.call_id if self.call else "-"
        logger.warning(
            log.kv(event="connection_closed", peer=self.peer, reason=reason),
            extra={"call_id": call_id},
        )
        if self.transport is not None:
            self.transport.abort()
        self._end(reason, True, logged=True)

    def _end(self, reason: str, error: bool, logged: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pacer is not None:
            self.server.clock.discard(self._pacer)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        call = self.call
        if call is not None:
            self.server.stats.active_calls -= 1
            if not logged:
                logger.info(
                    log.kv(event="call_media_ended", reason=reason, frames_in=call.frames_in),
                    extra={"call_id": call.call_id},
                )
            if self._recording is not None:
                self._recording.close()
                self._recording = None
            if self._pacer is None:
                # ended before its first audio: the agent still sees the call
                # start and end, so every call is accounted for
                call._start_media(8000, Pacer(8000, lambda _pcm: None))
                self.server._dispatch(call)
            call._finish(MediaEnded(reason, error))


class AudioSocketServer:
    """Listens for Asterisk AudioSocket connections and runs ``on_call`` per call."""

    def __init__(
        self,
        on_call: CallHandler,
        *,
        clock: FrameClock | None = None,
        max_calls: int = 1000,
        handshake_timeout: float = 5.0,
        max_frame_bytes: int = proto.DEFAULT_MAX_PAYLOAD,
        lead_frames: int = 0,
        max_send_buffer_ms: int = 2000,
        recorder: Callable[[str, int], CallRecording] | None = None,
        rate_hint: Callable[[str], int | None] | None = None,
    ) -> None:
        self.on_call = on_call
        self.clock = clock or FrameClock()
        self.max_calls = max_calls
        #: SIGTERM: new connections are closed at once (stop_accepting)
        self.draining = False
        self.handshake_timeout = handshake_timeout
        self.max_frame_bytes = max_frame_bytes
        self.lead_frames = lead_frames
        self.max_send_buffer_ms = max_send_buffer_ms
        self.recorder = recorder
        #: the call's media rate if the control plane already knows it
        self.rate_hint = rate_hint
        self.stats = ServerStats()
        self._server: asyncio.Server | None = None
        self._live: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 9092) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, reuse_port=True, backlog=1024
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (sock[0], sock[1])
        logger.info(log.kv(event="audiosocket_listening", address=f"{sock[0]}:{sock[1]}"))
        return self.address

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return self._tasks

    def _dispatch(self, call: AudioSocketCall) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run_call(call), name=f"call-{call.call_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_call(self, call: AudioSocketCall) -> None:
        await run_agent(self.on_call, call)

    def stop_accepting(self) -> None:
        """Take no new call: each new connection is closed at once, before
        a frame (the PBX's dialplan then tries another bridge), and the calls
        in progress go on. The socket keeps listening: Asterisk 22's
        AudioSocket closes its descriptor twice after a refused connect,
        which can cut another call's media, so a draining bridge never
        refuses. A replacement may bind the same port meanwhile (SO_REUSEPORT)
        and takes the calls the kernel hands it."""
        if not self.draining:
            self.draining = True
            logger.info(log.kv(event="audiosocket_not_accepting", active=len(self._tasks)))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._live):
            conn.hangup("bridge shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        await self.clock.close()

"""FreeSWITCH media over WebSocket: mod_audio_stream (and mod_audio_fork).

FreeSWITCH is the WebSocket client. It sends the metadata the dialplan gave
``uuid_audio_stream`` as the first text message (we pass JSON with the call
uuid, rate and channel layout), then raw PCM16 frames: ``mono`` is what the
caller says, ``stereo`` interleaves the caller (left) with what the channel
plays (right; dropped here, so the agent never hears itself), ``mixed`` sums
both and is refused for the same reason.

Agent audio goes back as ``streamAudio`` messages of a few hundred ms each.
Upstream mod_audio_stream does not play them: it writes each to a file and
fires ``mod_audio_stream::play``, and we play the file with
``uuid_broadcast`` over the Event Socket (``playback="files"``). Forks that
inject the audio straight into the call need no Event Socket
(``playback="inject"``); mod_audio_fork takes ``playAudio``/``killAudio``
(``playback="fork"``).

Every connection must present the deployment's token, in the URL path
(``ws://bridge:9093/<token>``) or as ``Authorization: Bearer <token>``
(``STREAM_EXTRA_HEADERS``); anything else is refused before the upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import json
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .. import log
from ..audio.pacer import ChunkPacer, FrameClock, Playout
from ..audio.pcm import FRAME_MS
from ..control.esl import ESLController, ESLError
from ..media import AudioIn, DtmfIn, MediaEnded
from ..protocols import esl
from .inbox import CallRecording, Inbox, InboxMedia, run_agent, silent_playout

logger = log.get(__name__)

PLAYBACK_MODES = ("files", "inject", "fork")
RATES = (8000, 16000)
#: silence FreeSWITCH leaves between two queued file playbacks (measured on
#: 1.10.12: 180 ms after the first, then 100 ms)
FILE_SEAM_S = 0.12
#: messages of agent audio waiting for a slow socket before the call is dropped
MAX_OUTBOX = 50


class StreamError(ValueError):
    """The stream's metadata or frames are not what the bridge can use."""


@dataclass(frozen=True)
class StreamMeta:
    call_id: str
    rate: int = 8000
    mix: str = "mono"
    caller: str = ""
    called: str = ""
    extra: dict[str, Any] | None = None


def parse_metadata(text: str, path_call_id: str | None = None) -> StreamMeta:
    """The first text message: our JSON, or anything a dialplan passed."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = {"metadata": text}
    if not isinstance(obj, dict):
        obj = {"metadata": obj}
    call_id = str(obj.get("uuid") or obj.get("callSid") or path_call_id or "")
    if not call_id:
        raise StreamError("the stream's metadata carries no call uuid")
    rate_raw = str(obj.get("rate", obj.get("sampleRate", 8000))).lower().rstrip("k")
    try:
        rate = int(rate_raw) * (1000 if int(rate_raw) < 100 else 1)
    except ValueError as exc:
        raise StreamError(f"bad rate {obj.get('rate')!r} in the stream's metadata") from exc
    if rate not in RATES:
        raise StreamError(f"unsupported rate {rate} Hz (8000 or 16000)")
    mix = str(obj.get("mix", "mono")).lower()
    if mix == "mixed":
        raise StreamError(
            "mix 'mixed' sums the agent's own voice into the caller's: use 'mono' or 'stereo'"
        )
    if mix not in ("mono", "stereo"):
        raise StreamError(f"unknown mix {mix!r} (mono or stereo)")
    return StreamMeta(
        call_id,
        rate,
        mix,
        caller=str(obj.get("caller", "")),
        called=str(obj.get("called", "")),
        extra=obj,
    )


def caller_channel(frame: bytes, mix: str) -> bytes:
    """The caller's audio from one binary message."""
    if mix == "stereo":
        if len(frame) % 4:
            raise StreamError(f"stereo frame of {len(frame)} bytes is not whole samples")
        import numpy as np

        return np.frombuffer(frame, dtype="<i2")[0::2].tobytes()
    if len(frame) % 2:
        raise StreamError(f"frame of {len(frame)} bytes is not whole samples")
    return frame


def stream_audio_message(pcm: bytes, rate: int, mode: str) -> str:
    data = base64.b64encode(pcm).decode("ascii")
    if mode == "fork":
        body = {"audioContentType": "raw", "sampleRate": rate, "audioContent": data}
        return json.dumps({"type": "playAudio", "data": body})
    return json.dumps(
        {
            "type": "streamAudio",
            "data": {"audioDataType": "raw", "sampleRate": rate, "audioData": data},
        }
    )


class StreamCall(InboxMedia):
    """One FreeSWITCH call's media: implements :class:`voiceos_switch.media.CallMedia`."""

    pbx = "freeswitch"

    def __init__(self, server: AudioStreamServer, meta: StreamMeta, ws: Any) -> None:
        self.server = server
        self.meta = meta
        self.call_id = meta.call_id
        self.sample_rate = meta.rate
        self.caller, self.called = meta.caller, meta.called
        self.started_at = time.time()
        self.ws = ws
        self._inbox = Inbox()
        self._ended: MediaEnded | None = None
        self.frames_in = 0
        # files played one after another cost FreeSWITCH a seam each (measured)
        seam = FILE_SEAM_S if server.playback == "files" else 0.0
        self.pacer = ChunkPacer(meta.rate, self._send_chunk, server.chunk_frames, seam_s=seam)
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._sender = asyncio.get_running_loop().create_task(self._send_loop())
        self._plays_seen = 0
        self._stale_before = 0  # ::play events up to this ordinal were cut by a break
        self.recording: CallRecording | None = None
        self.play_errors = 0

    # CallMedia -----------------------------------------------------------------
    def send_audio(self, pcm: bytes) -> Playout:
        if self._ended is not None:
            return silent_playout()
        return self.pacer.enqueue(pcm)

    def clear(self) -> int:
        at_pbx = self.pacer.ahead(self.server.clock.clock.now()) > 0 or self._plays_pending
        dropped = self.pacer.clear()
        if at_pbx:
            self._break()
        return dropped

    def pause_output(self) -> None:
        self.pacer.pause()
        now = self.server.clock.clock.now()
        if self.pacer.ahead(now) > 0:
            # stop the PBX now; what it had not played waits for a resume
            self.pacer.take_back(now)
            self._break()

    def resume_output(self) -> None:
        self.pacer.resume()

    async def hangup(self) -> None:
        control = self.server.control
        self._finish(MediaEnded("agent hung up"))
        await self.ws.close(1000, "agent hung up")
        if control is not None and self.call_id not in control.transferred:
            try:
                await control.hangup(self.call_id)
            except ESLError as exc:
                logger.warning(log.kv(event="hangup_failed", error=exc))

    def monitor_output(self, callback: Callable[[bytes, float], None]) -> None:
        self.pacer.monitor = callback

    @property
    def speaking(self) -> bool:
        return self.pacer.speaking

    # outbound --------------------------------------------------------------------
    @property
    def _plays_pending(self) -> int:
        return max(0, self.pacer.chunks_sent - self._plays_seen)

    def _send_chunk(self, pcm: bytes) -> None:
        if self.recording is not None:
            self.recording.outbound(pcm)
        if self._outbox.qsize() >= MAX_OUTBOX:
            self.server.stats["slow_peers"] += 1
            self._fail("FreeSWITCH is not reading the stream: agent audio backed up")
            return
        self._outbox.put_nowait(stream_audio_message(pcm, self.sample_rate, self.server.playback))

    def _break(self) -> None:
        """Stop what the PBX is playing; later ::play events of it are stale."""
        self._stale_before = self.pacer.chunks_sent
        if self.server.playback == "fork":
            self._outbox.put_nowait(json.dumps({"type": "killAudio"}))
        elif self.server.control is not None:
            self.server.spawn(
                self._run_control("uuid_break", self.server.control.break_playback(self.call_id))
            )

    async def _run_control(self, what: str, action: Awaitable[None]) -> None:
        try:
            await action
        except ESLError as exc:
            logger.warning(
                log.kv(event="control_failed", action=what, error=exc),
                extra={"call_id": self.call_id},
            )

    def on_play(self, event: esl.Event) -> None:
        """mod_audio_stream wrote one of our messages to a file: play it."""
        self._plays_seen += 1
        if self._plays_seen <= self._stale_before or self._ended is not None:
            return  # cut by a barge-in before it could play
        try:
            path = str(json.loads(event.body)["file"])
        except (ValueError, KeyError, TypeError):
            self.play_errors += 1
            logger.warning(
                log.kv(event="bad_play_event", body=event.body[:120]),
                extra={"call_id": self.call_id},
            )
            return
        control = self.server.control
        if control is not None:
            self.server.spawn(
                self._run_control("uuid_broadcast", control.broadcast(self.call_id, path))
            )

    async def _send_loop(self) -> None:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            try:
                await self.ws.send(message)
            except Exception:  # noqa: BLE001 - the close is reported by the reader
                return

    # inbound ---------------------------------------------------------------------
    def _push_audio(self, frame: bytes) -> None:
        pcm = caller_channel(frame, self.meta.mix)
        self.frames_in += 1
        if self.recording is not None:
            self.recording.inbound(pcm)
        self._inbox.put(AudioIn(pcm))

    def _fail(self, reason: str) -> None:
        logger.warning(
            log.kv(event="stream_closed", reason=reason), extra={"call_id": self.call_id}
        )
        self._finish(MediaEnded(reason, True))
        self.server.spawn(self.ws.close(1011, reason[:100]))

    def _finish(self, ended: MediaEnded) -> None:
        if self._ended is not None:
            return
        self._ended = ended
        self.pacer.clear()
        self.server.clock.discard(self.pacer)
        self._outbox.put_nowait(None)
        if self.recording is not None:
            self.recording.close()
            self.recording = None
        self._inbox.put(ended)


CallHandler = Callable[[StreamCall], Awaitable[None]]


class AudioStreamServer:
    """WebSocket server for mod_audio_stream connections, one call each."""

    def __init__(
        self,
        on_call: CallHandler,
        token: str,
        *,
        clock: FrameClock | None = None,
        control: ESLController | None = None,
        playback: str = "files",
        chunk_ms: int = 200,
        max_calls: int = 1000,
        handshake_timeout: float = 5.0,
        max_frame_bytes: int = 16384,
        recorder: Callable[[str, int], CallRecording] | None = None,
    ) -> None:
        if not token or len(token) < 16:
            raise ValueError("the stream token must be at least 16 characters")
        if playback not in PLAYBACK_MODES:
            raise ValueError(f"playback must be one of {', '.join(PLAYBACK_MODES)}")
        self.on_call = on_call
        self._token = token
        self.clock = clock or FrameClock()
        self.control = control
        self.playback = playback
        self.chunk_frames = max(1, chunk_ms // FRAME_MS)
        self.max_calls = max_calls
        self.handshake_timeout = handshake_timeout
        self.max_frame_bytes = max_frame_bytes
        self.recorder = recorder
        self.calls: dict[str, StreamCall] = {}
        self.stats = collections.Counter[str]()
        self._server: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address: tuple[str, int] | None = None
        if control is not None:
            control.add_listener(self._on_event)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def tasks(self) -> set[asyncio.Task[Any]]:
        return self._tasks

    async def start(self, host: str = "127.0.0.1", port: int = 9093) -> tuple[str, int]:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._authorise,
            max_size=self.max_frame_bytes,
            compression=None,
            ping_interval=None,  # FreeSWITCH's client does not answer pings reliably
        )
        sock = next(iter(self._server.sockets)).getsockname()
        self.address = (sock[0], sock[1])
        logger.info(log.kv(event="audiostream_listening", address=f"{sock[0]}:{sock[1]}"))
        return self.address

    def url(self, host: str | None = None) -> str:
        """The address to give ``uuid_audio_stream`` (token in the path)."""
        assert self.address is not None
        return f"ws://{host or self.address[0]}:{self.address[1]}/{self._token}"

    def _authorise(self, connection: Any, request: Any) -> Any:
        path = request.path.split("?", 1)[0].strip("/")
        given = path.split("/", 1)[0]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            self.stats["refused"] += 1
            peer = connection.remote_address
            logger.warning(
                log.kv(event="stream_refused", peer=f"{peer[0]}:{peer[1]}", reason="bad token")
            )
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid stream token is required\n")
        if len(self.calls) >= self.max_calls:
            self.stats["refused"] += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many calls\n")
        return None

    async def _handle(self, ws: Any) -> None:
        path = ws.request.path.split("?", 1)[0].strip("/").split("/")
        path_call_id = path[1] if len(path) > 1 else None
        self.stats["connections"] += 1
        try:
            first = await asyncio.wait_for(ws.recv(), self.handshake_timeout)
        except TimeoutError:
            self.stats["handshake_timeouts"] += 1
            logger.warning(log.kv(event="stream_closed", reason="no metadata or audio in time"))
            await ws.close(1008, "nothing received")
            return
        except Exception:  # noqa: BLE001 - closed before a word
            return
        try:
            if isinstance(first, str):
                meta, pending = parse_metadata(first, path_call_id), None
            else:
                meta = StreamMeta(path_call_id or str(uuidlib.uuid4()))
                pending = first
        except StreamError as exc:
            self.stats["protocol_errors"] += 1
            logger.warning(log.kv(event="stream_closed", reason=str(exc)))
            await ws.close(1008, str(exc)[:100])
            return
        if meta.call_id in self.calls:
            self.stats["protocol_errors"] += 1
            await ws.close(1008, "a stream for this call is already open")
            return
        await self._run(ws, meta, pending)

    async def _run(self, ws: Any, meta: StreamMeta, pending: bytes | None) -> None:
        call = StreamCall(self, meta, ws)
        self.calls[call.call_id] = call
        self.stats["calls"] += 1
        if self.recorder is not None:
            try:
                call.recording = self.recorder(call.call_id, call.sample_rate)
            except OSError as exc:
                logger.error(
                    log.kv(event="recording_failed", error=exc), extra={"call_id": call.call_id}
                )
        self.clock.add(call.pacer)
        logger.info(
            log.kv(event="call_connected", pbx="freeswitch", rate=meta.rate, mix=meta.mix),
            extra={"call_id": call.call_id},
        )
        agent = asyncio.get_running_loop().create_task(
            self._run_call(call), name=f"call-{call.call_id}"
        )
        self._tasks.add(agent)
        agent.add_done_callback(self._tasks.discard)
        reason, error = "stream closed", False
        try:
            if pending is not None:
                call._push_audio(pending)
            async for message in ws:
                if isinstance(message, bytes):
                    call._push_audio(message)
                # later text messages carry nothing the bridge needs
        except StreamError as exc:
            self.stats["protocol_errors"] += 1
            reason, error = f"protocol error: {exc}", True
            await ws.close(1008, str(exc)[:100])
        except Exception as exc:  # noqa: BLE001 - a broken connection ends this call only
            reason, error = f"stream lost: {exc}", True
        finally:
            code = ws.close_code
            if not error and code not in (None, 1000, 1001):
                reason, error = f"stream closed with code {code}", True
            if call._ended is None:
                logger.info(
                    log.kv(event="call_media_ended", reason=reason, frames_in=call.frames_in),
                    extra={"call_id": call.call_id},
                )
            call._finish(MediaEnded(reason, error))
            self.calls.pop(call.call_id, None)

    async def _run_call(self, call: StreamCall) -> None:
        await run_agent(self.on_call, call)

    def _on_event(self, event: esl.Event) -> None:
        call = self.calls.get(event.uuid)
        if call is None:
            return
        if event.name == "CUSTOM" and event.subclass == "mod_audio_stream::play":
            call.on_play(event)
        elif event.name == "DTMF":
            digit = event.get("DTMF-Digit")
            if digit:
                call._inbox.put(DtmfIn(digit))

    async def close(self) -> None:
        for call in list(self.calls.values()):
            call._finish(MediaEnded("bridge shutting down"))
            self.spawn(call.ws.close(1001, "bridge shutting down"))
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.clock.close()

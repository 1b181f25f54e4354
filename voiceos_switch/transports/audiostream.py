"""FreeSWITCH media over WebSocket: mod_audio_stream (and mod_audio_fork).

FreeSWITCH is the WebSocket client. The dialplan puts the call's uuid and
rate in the stream URL (``ws://bridge:9093/<token>/<uuid>/<rate>``) and
passes JSON metadata (uuid, rate, layout, numbers), which mod_audio_stream
sends as a text message, usually first; when the channel already has
another media bug (``record_session``) an audio frame comes first, so early
audio is held until the metadata arrives (or briefly, when the URL already
names the call). Then raw PCM16 frames: ``mono`` is what the
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from .. import log
from ..audio.pacer import ChunkPacer, FrameClock, Playout
from ..audio.pcm import FRAME_MS
from ..callcontrol import PlaybackControl
from ..errors import ControlError
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
#: how long a new call waits for an event socket that is (re)connecting
ESL_WAIT_S = 0.5
#: how long early audio waits for the metadata when the URL names the call
METADATA_WAIT_S = 0.5
#: early frames held at most while waiting for the metadata (2 s of audio)
MAX_EARLY_FRAMES = 100
#: where a call goes when the bridge cannot keep it (the shipped dialplan's
#: fallback: the humans, with the reason in ``voiceos_fallback_reason``)
FALLBACK = ("voiceos_fallback", "XML", "voiceos-agent")


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


def parse_rate(value: object) -> int:
    """A stream rate as dialplans write it: 8000, "16000", "8k", 16."""
    raw = str(value).lower().rstrip("k")
    try:
        rate = int(raw) * (1000 if int(raw) < 100 else 1)
    except ValueError as exc:
        raise StreamError(f"bad rate {value!r} in the stream's metadata or URL") from exc
    if rate not in RATES:
        raise StreamError(f"unsupported rate {rate} Hz (8000 or 16000)")
    return rate


def parse_metadata(
    text: str, path_call_id: str | None = None, path_rate: int | None = None
) -> StreamMeta:
    """The metadata text message: our JSON, or anything a dialplan passed.
    The URL's uuid and rate (``path_*``) stand in for what it lacks."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = {"metadata": text}
    if not isinstance(obj, dict):
        obj = {"metadata": obj}
    call_id = str(obj.get("uuid") or obj.get("callSid") or path_call_id or "")
    if not call_id:
        raise StreamError("the stream's metadata carries no call uuid")
    rate = parse_rate(obj.get("rate", obj.get("sampleRate", path_rate or 8000)))
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


def path_parts(path: str) -> tuple[str | None, int | None]:
    """The call uuid and rate from ``/<token>[/<uuid>[/<rate>]]``."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    call_id = parts[1] if len(parts) > 1 and parts[1] else None
    rate = None
    if len(parts) > 2 and parts[2]:
        try:
            rate = parse_rate(parts[2])
        except StreamError:
            rate = None
    return call_id, rate


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
        #: files handed to ``uuid_broadcast`` that FreeSWITCH has not finished
        self._playing: set[str] = set()
        self._watchdog: asyncio.Task[None] | None = None
        if server.control is not None and server.watchdog_s > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._keep_alive())

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
        """Let FreeSWITCH finish playing what the caller is hearing, then
        end the call there and close the stream. Runs to the end even if
        the task that asked is cancelled as the media ends."""
        task = asyncio.ensure_future(self._hang_up())
        self.server.spawn(task)
        await asyncio.shield(task)

    async def _hang_up(self) -> None:
        control = self.server.control
        if self._ended is None:
            await self.finish_playing()
        await self.stop_watchdog()
        if control is not None and self.call_id not in control.transferred:
            try:
                await control.hangup(self.call_id)
            except ControlError as exc:
                logger.warning(
                    log.kv(event="hangup_failed", error=exc), extra={"call_id": self.call_id}
                )
        self._finish(MediaEnded("agent hung up"))
        await self.ws.close(1000, "agent hung up")

    async def finish_playing(self, timeout: float = 30.0) -> None:
        """Until the caller has heard everything sent (FreeSWITCH reports each
        file's PLAYBACK_STOP), bounded by what is left to play plus a margin."""
        clock = self.server.clock.clock
        left = self.pacer.ahead(clock.now()) + self.pacer.queued_frames * FRAME_MS / 1000
        deadline = time.monotonic() + min(timeout, left + 2.0)
        while time.monotonic() < deadline and self._ended is None:
            waiting = self.pacer.queued_frames > 0
            if self.server.playback == "files":
                waiting = waiting or self._plays_pending > 0 or bool(self._playing)
            else:
                waiting = waiting or self.pacer.ahead(clock.now()) > 0
            if not waiting:
                return
            await asyncio.sleep(FRAME_MS / 1000)

    async def stop_watchdog(self) -> None:
        """The bridge lets go of the call (transfer, hangup): FreeSWITCH must
        not move it to the fallback later."""
        task, self._watchdog = self._watchdog, None
        if task is None:
            return
        task.cancel()
        control = self.server.control
        if control is not None:
            await self._run_control("sched_del", control.cancel_fallback(self.call_id))

    async def _keep_alive(self) -> None:
        """While the bridge has the call, push FreeSWITCH's scheduled move to
        the fallback ahead of it: if the bridge dies, the call reaches a
        person within ``watchdog_s`` instead of sitting parked in silence."""
        control = self.server.control
        assert control is not None
        every = self.server.watchdog_s / 3
        slot = 0
        try:  # if the fallback fires from now on, this is why
            await control.set_var(self.call_id, "voiceos_fallback_reason", "the bridge went away")
        except ControlError as exc:
            logger.warning(
                log.kv(event="watchdog_failed", error=exc), extra={"call_id": self.call_id}
            )
        while True:
            try:
                await control.schedule_fallback(
                    self.call_id, self.server.watchdog_s, FALLBACK, slot
                )
                slot = 1 - slot
            except ControlError as exc:
                logger.warning(
                    log.kv(event="watchdog_failed", error=exc), extra={"call_id": self.call_id}
                )
            await asyncio.sleep(every)

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
        self._playing.clear()
        if self.server.playback == "fork":
            self._outbox.put_nowait(json.dumps({"type": "killAudio"}))
        elif self.server.control is not None:
            self.server.spawn(
                self._run_control("uuid_break", self.server.control.break_playback(self.call_id))
            )

    async def _run_control(self, what: str, action: Awaitable[None]) -> None:
        try:
            await action
        except ControlError as exc:
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
            self._playing.add(path)
            self.server.spawn(
                self._run_control("uuid_broadcast", control.broadcast(self.call_id, path))
            )

    def on_playback_stop(self, event: esl.Event) -> None:
        self._playing.discard(event.get("Playback-File-Path") or "")

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
        if self._watchdog is not None:
            # the stream is gone (the call ended, or the bridge lost it): what
            # is scheduled stays, and moves the call only if it is still up
            self._watchdog.cancel()
            self._watchdog = None
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
        control: PlaybackControl | None = None,
        playback: str = "files",
        chunk_ms: int = 200,
        max_calls: int = 1000,
        handshake_timeout: float = 5.0,
        max_frame_bytes: int = 16384,
        recorder: Callable[[str, int], CallRecording] | None = None,
        watchdog_s: float = 3.0,
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
        #: FreeSWITCH moves a call to the fallback this long after the bridge
        #: last said it has it (0: never)
        self.watchdog_s = watchdog_s
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
            # FreeSWITCH answers a close at once; one that does not must not
            # hold its channel's stream stop (and a fallback) for 10 s
            close_timeout=2.0,
        )
        sock = next(iter(self._server.sockets)).getsockname()
        self.address = (sock[0], sock[1])
        logger.info(log.kv(event="audiostream_listening", address=f"{sock[0]}:{sock[1]}"))
        return self.address

    def url(self, host: str | None = None) -> str:
        """The address to give ``uuid_audio_stream`` (token in the path)."""
        assert self.address is not None
        return f"ws://{host or self.address[0]}:{self.address[1]}/{self._token}"

    async def _authorise(self, connection: Any, request: Any) -> Any:
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
        # a call the bridge cannot play to is refused before the upgrade: no
        # audio piles up unread, and FreeSWITCH's stream ends at once
        call_id, _ = path_parts(request.path)
        refusal = await self._cannot_play(call_id or "")
        if refusal:
            self.stats["refused"] += 1
            logger.error(log.kv(event="call_refused", reason=refusal), extra={"call_id": call_id})
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, refusal + "\n")
        return None

    async def _handle(self, ws: Any) -> None:
        path_call_id, path_rate = path_parts(ws.request.path)
        self.stats["connections"] += 1
        try:
            meta, early = await self._identify(ws, path_call_id, path_rate)
        except StreamError as exc:
            self.stats["protocol_errors"] += 1
            logger.warning(log.kv(event="stream_closed", reason=str(exc)))
            await ws.close(1008, str(exc)[:100])
            return
        except Exception:  # noqa: BLE001 - closed before a word
            return
        if meta.call_id in self.calls:
            self.stats["protocol_errors"] += 1
            await ws.close(1008, "a stream for this call is already open")
            return
        await self._run(ws, meta, early)

    async def _identify(
        self, ws: Any, path_call_id: str | None, path_rate: int | None
    ) -> tuple[StreamMeta, list[bytes]]:
        """The call's metadata, whatever the order of the first messages:
        audio that comes before it is held (and played to the agent once the
        call is known). A URL that names the call waits for the metadata only
        briefly; one that does not must be followed by metadata in time."""
        early: list[bytes] = []
        deadline = time.monotonic() + self.handshake_timeout
        while True:
            wait = deadline - time.monotonic()
            if path_call_id is not None and early:
                wait = min(wait, METADATA_WAIT_S - len(early) * FRAME_MS / 1000)
            try:
                message = await asyncio.wait_for(ws.recv(), max(0.0, wait))
            except TimeoutError:
                message = None
            if isinstance(message, str):
                return parse_metadata(message, path_call_id, path_rate), early
            if message is not None and len(early) < MAX_EARLY_FRAMES:
                early.append(message)
                continue
            if path_call_id is not None and early:
                return StreamMeta(path_call_id, path_rate or 8000), early
            self.stats["handshake_timeouts"] += 1
            if not early:
                raise StreamError(f"no metadata or audio within {self.handshake_timeout:g} s")
            raise StreamError(
                f"{len(early)} audio frames and no metadata within {self.handshake_timeout:g} s, "
                "and the stream URL names no call: use ws://bridge/<token>/<uuid>/<rate> "
                "(the shipped dialplan does)"
            )

    async def _cannot_play(self, call_id: str) -> str:
        """Why the bridge could not play to this call, or ''. An event socket
        that is (re)connecting gets a moment."""
        if self.playback != "files":
            return ""
        control = self.control
        if control is None:
            return "no event socket to play agent audio with"
        if not control.reaches(call_id):
            await control.wait_ready(ESL_WAIT_S)
        if not control.reaches(call_id):
            why = control.last_error or "not connected"
            return f"cannot play to FreeSWITCH: the event socket is down ({why})"
        return ""

    async def _run(self, ws: Any, meta: StreamMeta, early: list[bytes]) -> None:
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
            for frame in early:
                call._push_audio(frame)
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

    async def _hand_back(self, call: StreamCall) -> None:
        control = self.control
        if control is None or call._ended is not None:
            return
        try:
            await control.set_var(call.call_id, "voiceos_fallback_reason", "bridge shutting down")
            await control.redirect(call.call_id, FALLBACK[0], FALLBACK[2])
            logger.info(log.kv(event="call_handed_back"), extra={"call_id": call.call_id})
        except ControlError as exc:
            logger.warning(
                log.kv(event="hand_back_failed", error=exc), extra={"call_id": call.call_id}
            )
        await call.stop_watchdog()

    def _on_event(self, event: esl.Event) -> None:
        call = self.calls.get(event.uuid)
        if call is None:
            return
        if event.name == "CUSTOM" and event.subclass == "mod_audio_stream::play":
            call.on_play(event)
        elif event.name == "PLAYBACK_STOP":
            call.on_playback_stop(event)
        elif event.name == "DTMF":
            digit = event.get("DTMF-Digit")
            if digit:
                call._inbox.put(DtmfIn(digit))

    def stop_accepting(self) -> None:
        """Take no new stream (FreeSWITCH's connect fails and its dialplan
        moves the caller on); the calls in progress go on."""
        if self._server is not None and self._server.is_serving():
            self._server.close(close_connections=False)
            logger.info(log.kv(event="audiostream_not_accepting", active=len(self.calls)))

    async def close(self) -> None:
        """Stop serving. Live calls are handed back to FreeSWITCH's fallback
        (the humans) first, not left parked in silence."""
        handback = [self._hand_back(call) for call in list(self.calls.values())]
        if handback:
            await asyncio.gather(*handback)
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

"""A FreeSWITCH stand-in: the Event Socket server and the mod_audio_stream
WebSocket client, byte for byte as the real FreeSWITCH 1.10.12 speaks them
(tests/data/freeswitch holds captures of the real one, and
test_freeswitch.py checks this stand-in against them).

Written from the protocol descriptions, on plain asyncio streams, sharing no
code with the bridge's own ESL codec or WebSocket server, so that a bug in
those cannot hide behind the same bug here.

What it does, as the real one does:

* ESL inbound: ``auth/request``, ``auth`` (``-ERR invalid`` then a
  disconnect notice on a wrong password), ``event json ...``, ``api`` with
  ``api/response`` bodies, ``sendevent`` with a ``+OK <uuid>`` reply, and
  events as ``text/event-json`` with Content-Length first.
* A call: CHANNEL_ANSWER, then the dialplan's ``uuid_audio_stream``: a
  WebSocket upgrade with the real module's headers (no space after the
  colon, an Origin, no User-Agent), the JSON metadata as the first text
  frame, then 320-byte masked binary frames every 20 ms (mono 8 kHz: the
  caller only).
* ``streamAudio`` messages become files and ``mod_audio_stream::play``
  events; ``uuid_broadcast`` plays them in order into what the caller hears,
  with the seam measured between two queued playbacks (100 ms);
  ``uuid_break`` stops and flushes; ``uuid_transfer``, ``uuid_setvar``,
  ``uuid_kill``, ``uuid_record`` and ``uuid_audio_stream ... stop`` act on
  the call; DTMF and hangups come as events.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import struct
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

FRAME = 320  # mono 8 kHz, 20 ms
SEAM_S = 0.10  # silence between two queued uuid_broadcast playbacks (measured)
CORE_UUID = str(uuidlib.uuid4())


def _event_bytes(headers: dict[str, str], body: str | None = None) -> bytes:
    obj: dict[str, str] = dict(headers)
    if body is not None:
        obj["_body"] = body
    data = json.dumps(obj, separators=(",", ":")).encode()
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(data) + data


def _reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def _api(body: str) -> bytes:
    data = body.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(data) + data


@dataclass
class StandinCall:
    uuid: str
    caller: str
    called: str
    #: what the caller says: (seconds into the call, PCM16 8 kHz)
    script: list[tuple[float, bytes]]
    hold_s: float
    started: float = field(default_factory=time.monotonic)
    heard: bytearray = field(default_factory=bytearray)  # the caller's ear, 8 kHz
    variables: dict[str, str] = field(default_factory=dict)
    transferred_to: str | None = None
    #: every extension the call was moved to, in order (the fallback, then a person)
    routes: list[str] = field(default_factory=list)
    #: the API commands for this call, with when they came (seconds into the call)
    api: list[tuple[float, str]] = field(default_factory=list)
    hung_up: str | None = None
    stream_closed: tuple[int, str] | None = None
    plays: list[tuple[float, float, str]] = field(default_factory=list)  # start, stop, file
    queue: list[str] = field(default_factory=list)
    files: int = 0
    broken: int = 0
    writer: asyncio.StreamWriter | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.started

    def say(self, pcm: bytes, at: float | None = None) -> None:
        """The caller speaks ``pcm`` at ``at`` seconds into the call (now by default)."""
        start = int((self.now() + 0.04 if at is None else at) * 8000) * 2
        end = min(len(self.timeline), start + len(pcm))
        self.timeline[start:end] = pcm[: end - start]

    def playing_since(self) -> float | None:
        """When the agent's current playback started, if one is playing."""
        return self.current

    timeline: bytearray = field(default_factory=bytearray)
    current: float | None = None


class FreeSwitchStandin:
    def __init__(self, password: str, stream_url: str, tmpdir: Path) -> None:
        self.password = password
        self.stream_url = stream_url  # ws://host:port/<token>
        self.tmpdir = tmpdir
        self.calls: dict[str, StandinCall] = {}
        self.commands: list[str] = []
        self.events_sent: list[dict[str, str]] = []
        self._clients: list[tuple[asyncio.StreamWriter, set[str]]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.handshakes: list[bytes] = []
        self._outbound_subs: dict[str, tuple[asyncio.StreamWriter, set[str]]] = {}
        self.port = 0
        #: FreeSWITCH's scheduler: task id -> (run at epoch second, group, api command)
        self.scheduled: dict[int, tuple[int, str, str]] = {}
        self._next_task = 1
        #: mod_audio_stream sends the first audio frame before the metadata (as it
        #: does when the channel already has another media bug: record_session)
        self.audio_before_metadata = False
        #: events fired to subscribers that a playback on the channel consumed instead
        self.swallowed: list[dict[str, str]] = []

    # --- ESL server ----------------------------------------------------------------
    async def start(self) -> int:
        self._server = await asyncio.start_server(self._esl_client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._scheduler())
        return self.port

    async def close(self) -> None:
        for call in list(self.calls.values()):
            if call.writer is not None:
                call.writer.close()
        for writer, _ in self._clients:
            writer.close()
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_event_sockets(self) -> None:
        """FreeSWITCH restarts its event socket: every client is cut off."""
        for writer, _ in self._clients:
            writer.transport.abort()
        self._clients.clear()

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _esl_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subs: set[str] = set()
        writer.write(b"Content-Type: auth/request\n\n")
        authed = False
        try:
            while True:
                head = await reader.readuntil(b"\n\n")
                lines = head.decode().strip("\n").split("\n")
                command, headers = (
                    lines[0],
                    dict(line.split(": ", 1) for line in lines[1:] if ": " in line),
                )
                body = b""
                if "Content-Length" in headers:
                    body = await reader.readexactly(int(headers["Content-Length"]))
                self.commands.append(command)
                if not authed:
                    if command == f"auth {self.password}":
                        authed = True
                        writer.write(_reply("+OK accepted"))
                        self._clients.append((writer, subs))
                        continue
                    writer.write(_reply("-ERR invalid"))
                    notice = (
                        b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
                    )
                    writer.write(
                        b"Content-Type: text/disconnect-notice\nContent-Length: %d\n\n"
                        % len(notice)
                        + notice
                    )
                    await writer.drain()
                    writer.close()
                    return
                if command.startswith("event json "):
                    subs.update(command.split()[2:])
                    writer.write(_reply("+OK event listener enabled json"))
                elif command.startswith("api "):
                    writer.write(_api(await self._api(command[4:])))
                elif command == "sendevent CUSTOM":
                    ev_uuid = str(uuidlib.uuid4())
                    writer.write(_reply(f"+OK {ev_uuid}"))
                    self._sendevent(headers, body.decode() if body else None)
                elif command == "exit":
                    writer.write(_reply("+OK bye"))
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(_reply("-ERR command not found"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._clients = [(w, s) for w, s in self._clients if w is not writer]

    async def _outbound(self, call: StandinCall, host: str, port: int) -> None:
        """``socket host:port async full``: FreeSWITCH connects to the bridge."""
        reader, writer = await asyncio.open_connection(host, port)
        subs: set[str] = set()
        try:
            while True:
                head = await reader.readuntil(b"\n\n")
                command = head.decode().split("\n", 1)[0]
                self.commands.append(command)
                if command == "connect":
                    # CHANNEL_DATA: the channel's headers, URL-encoded, then the reply
                    fields = {
                        "Event-Name": "CHANNEL_DATA",
                        "Core-UUID": CORE_UUID,
                        "Channel-State": "CS_EXECUTE",
                        **self._channel(call),
                        "Answer-State": "answered",
                    }
                    lines = [f"{k}: {quote(v, safe='')}" for k, v in fields.items()]
                    lines += [
                        "Content-Type: command/reply",
                        "Reply-Text: %2BOK%0A",
                        "Socket-Mode: async",
                        "Control: full",
                    ]
                    writer.write(("\n".join(lines) + "\n\n").encode())
                elif command.startswith("myevents"):
                    subs.add("ALL")
                    self._outbound_subs[call.uuid] = (writer, subs)
                    writer.write(_reply("+OK Events Enabled"))
                elif command == "linger":
                    writer.write(_reply("+OK will linger"))
                elif command.startswith("api "):
                    writer.write(_api(await self._api(command[4:])))
                else:
                    writer.write(_reply("-ERR command not found"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._outbound_subs.pop(call.uuid, None)
            writer.close()

    def _sendevent(self, headers: dict[str, str], body: str | None) -> None:
        """mod_event_socket's ``sendevent``: with a ``Unique-ID`` of a live
        channel the event is queued on that channel, not fired. A playback in
        progress consumes it; otherwise it is fired later without its
        ``Event-Name`` (as the real one did)."""
        call = self.calls.get(headers.get("Unique-ID", ""))
        if call is not None and call.hung_up is None:
            if call.current is not None:
                self.swallowed.append({**headers, "_body": body or ""})
                return
            self._fire({"Event-Name": "", **headers}, body)
            return
        self._fire({"Event-Name": "CUSTOM", **headers}, body)

    def _fire(self, headers: dict[str, str], body: str | None = None) -> None:
        headers = {
            "Event-Name": headers.get("Event-Name", "CUSTOM"),
            "Core-UUID": CORE_UUID,
            "Event-Date-Timestamp": str(int(time.time() * 1e6)),
            **headers,
        }
        if not headers["Event-Name"]:
            del headers["Event-Name"]  # an event queued on a channel, fired later
        self.events_sent.append({**headers, "_body": body or ""})
        data = _event_bytes(headers, body)
        name, sub = headers.get("Event-Name", ""), headers.get("Event-Subclass", "")
        linked = self._outbound_subs.get(headers.get("Unique-ID", ""))
        for writer, subs in [*self._clients, *([linked] if linked else [])]:
            if "ALL" in subs or name in subs and (name != "CUSTOM" or sub in subs or not sub):
                writer.write(data)

    def _channel(self, call: StandinCall) -> dict[str, str]:
        return {
            "Unique-ID": call.uuid,
            "Channel-Call-UUID": call.uuid,
            "Channel-Name": f"sofia/voiceos/{call.caller}@127.0.0.1",
            "Caller-Caller-ID-Number": call.caller,
            "Caller-Destination-Number": call.called,
            "Call-Direction": "inbound",
        }

    async def _api(self, text: str) -> str:
        parts = text.split(" ")
        cmd, args = parts[0], parts[1:]
        call = self.calls.get(args[0]) if args else None
        if call is not None:
            call.api.append((call.now(), text))
        if cmd.startswith("uuid_") and call is None:
            return "-ERR No such channel!\n"
        assert call is not None or not cmd.startswith("uuid_")
        if cmd == "uuid_broadcast" and call is not None:
            call.queue.append(args[1])
            return "+OK Message sent\n"
        if cmd == "uuid_break" and call is not None:
            call.queue.clear()
            call.broken += 1
            return "+OK\n"
        if cmd == "uuid_setvar" and call is not None:
            call.variables[args[1]] = " ".join(args[2:])
            return "+OK\n"
        if cmd == "uuid_transfer" and call is not None:
            self._transfer(call, args[1])
            return "+OK\n"
        if cmd == "uuid_kill" and call is not None:
            self._spawn(self.hang_up(call.uuid, args[1] if len(args) > 1 else "NORMAL_CLEARING"))
            return "+OK\n"
        if cmd == "uuid_record" and call is not None:
            return "+OK Success\n"
        if cmd == "uuid_audio_stream" and call is not None and args[1] == "start":
            # uuid_audio_stream <uuid> start <url> <mix> <rate> [metadata with spaces]
            url, meta = args[2], " ".join(args[5:])
            self._spawn(self._stream(call, meta, url))
            return "+OK Success\n"
        if cmd == "uuid_audio_stream" and call is not None and args[1] == "stop":
            self._spawn(self._close_stream(call, 1000, ""))
            return "+OK Success\n"
        if cmd == "sched_api":
            # sched_api +<seconds> <group> <command...>: whole epoch seconds
            when = int(time.time()) + int(args[0].lstrip("+"))
            task = self._next_task
            self._next_task += 1
            self.scheduled[task] = (when, args[1], " ".join(args[2:]))
            return f"+OK Added: {task}\n"
        if cmd == "sched_del":
            gone = [t for t, (_, g, _) in self.scheduled.items() if args[0] in (g, str(t))]
            for t in gone:
                del self.scheduled[t]
            return f"+OK Deleted: {len(gone)}\n"
        return f"-ERR {cmd} Command not found!\n"

    def _transfer(self, call: StandinCall, extension: str) -> None:
        """``uuid_transfer``: the channel leaves park for ``extension``; the
        shipped dialplan's voiceos_fallback stops the stream, drops the
        call's scheduled tasks and goes on to a person."""
        call.routes.append(extension)
        call.queue.clear()
        call.broken += 1
        if extension == "voiceos_fallback":
            for t in [t for t, (_, g, _) in self.scheduled.items() if call.uuid in g]:
                del self.scheduled[t]
            self._spawn(self._close_stream(call, 1000, ""))
            call.routes.append("operator")
            extension = "operator"
        call.transferred_to = extension

    async def _scheduler(self) -> None:
        """FreeSWITCH's task thread: runs due tasks, looking twice a second."""
        while True:
            now = int(time.time())
            for task, (when, _group, command) in list(self.scheduled.items()):
                if when <= now and self.scheduled.pop(task, None) is not None:
                    await self._api(command)
            await asyncio.sleep(0.5)

    # --- a call ----------------------------------------------------------------------
    async def place_call(
        self,
        script: list[tuple[float, bytes]],
        hold_s: float,
        caller: str = "5551234",
        called: str = "100",
        outbound: tuple[str, int] | None = None,
    ) -> StandinCall:
        """Answer a call from the trunk, run the voiceos_agent dialplan (stream
        to the bridge, park), and let the caller speak ``script``. With
        ``outbound``, run the socket variant instead: connect to the bridge's
        outbound event-socket server and let it start the stream."""
        call = StandinCall(str(uuidlib.uuid4()), caller, called, script, hold_s)
        call.timeline = bytearray(int(hold_s * 8000) * 2)
        for at, pcm in script:
            call.say(pcm, at)
        self.calls[call.uuid] = call
        self._fire({"Event-Name": "CHANNEL_ANSWER", **self._channel(call)})
        if outbound is not None:
            self._spawn(self._outbound(call, *outbound))
            return call
        # the shipped dialplan: the fallback in 3 s unless the bridge keeps the
        # call, then the stream, to a URL that names the call
        when = int(time.time()) + 3
        self.scheduled[self._next_task] = (
            when,
            f"voiceos-fallback-{call.uuid}-1",
            f"uuid_transfer {call.uuid} voiceos_fallback XML voiceos-agent",
        )
        self._next_task += 1
        meta = json.dumps(
            {"uuid": call.uuid, "rate": 8000, "mix": "mono", "caller": caller, "called": called},
            separators=(",", ":"),
        )
        self._spawn(self._stream(call, meta, f"{self.stream_url}/{call.uuid}/8000"))
        return call

    async def _stream(self, call: StandinCall, metadata: str, url: str | None = None) -> None:
        rest = (url or self.stream_url).removeprefix("ws://")
        hostport, _, path = rest.partition("/")
        host, port = hostport.rsplit(":", 1)
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            self._stream_error(call, str(exc))
            return
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /{path} HTTP/1.1\r\nHost:{hostport}\r\nUpgrade:websocket\r\n"
            f"Connection:upgrade\r\nSec-WebSocket-Key:{key}\r\nSec-WebSocket-Version:13\r\n"
            f"Origin:http://{hostport}\r\n\r\n"
        ).encode()
        self.handshakes.append(request)
        writer.write(request)
        try:
            status = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._stream_error(call, f"handshake: {exc}")
            return
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            self._stream_error(call, status.split(b"\r\n", 1)[0].decode())
            writer.close()
            return
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        )
        assert accept in status, "bad Sec-WebSocket-Accept"
        call.writer = writer
        self._fire(
            {
                "Event-Name": "CUSTOM",
                "Event-Subclass": "mod_audio_stream::connect",
                **self._channel(call),
            },
            json.dumps({"status": "connected"}),
        )
        send = self._sender(writer)
        if self.audio_before_metadata:
            await send(0x2, bytes(call.timeline[:FRAME]))
        await send(0x1, metadata.encode())
        tasks = [
            asyncio.ensure_future(self._send_audio(call, send)),
            asyncio.ensure_future(self._receive(call, reader, send)),
            asyncio.ensure_future(self._play(call)),
        ]
        try:
            await asyncio.wait([tasks[0], tasks[1]], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            await self._parked(call)

    async def _parked(self, call: StandinCall) -> None:
        """The stream is over and the channel stays parked, in silence, until
        something moves it, FreeSWITCH hangs it up, or the caller gives up at
        the end of their script."""
        end = call.started + call.hold_s
        while time.monotonic() < end:
            if call.hung_up is not None or call.transferred_to is not None:
                break
            await asyncio.sleep(0.05)
        if call.hung_up is None and call.transferred_to is None:
            await self.hang_up(call.uuid)  # the caller puts the phone down
        call.done.set()

    def _stream_error(self, call: StandinCall, error: str) -> None:
        body = json.dumps({"status": "error", "message": {"code": 6, "error": error}})
        self._fire(
            {
                "Event-Name": "CUSTOM",
                "Event-Subclass": "mod_audio_stream::error",
                **self._channel(call),
            },
            body,
        )
        self._spawn(self._parked(call))

    @staticmethod
    def _sender(writer: asyncio.StreamWriter) -> object:
        async def send(opcode: int, payload: bytes) -> None:
            mask = os.urandom(4)
            n = len(payload)
            if n < 126:
                head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
            elif n < 65536:
                head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
            else:
                head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            writer.write(head + mask + masked)
            await writer.drain()

        return send

    async def _send_audio(self, call: StandinCall, send: object) -> None:
        """The caller's side: one 20 ms frame per period, speech or silence."""
        timeline = call.timeline
        n = 0
        while (n + 1) * FRAME <= len(timeline) and call.hung_up is None:
            if call.transferred_to is not None or call.stream_closed is not None:
                break
            await send(0x2, bytes(timeline[n * FRAME : (n + 1) * FRAME]))  # type: ignore[operator]
            n += 1
            await asyncio.sleep(max(0.0, call.started + n * 0.02 - time.monotonic()))
        if call.stream_closed is None and call.transferred_to is None:
            await self.hang_up(call.uuid)  # the caller puts the phone down
        else:
            await asyncio.sleep(0.5)

    async def _receive(self, call: StandinCall, reader: asyncio.StreamReader, send: object) -> None:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(n)  # a server never masks
            opcode = b0 & 0x0F
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                call.stream_closed = (code, payload[2:].decode(errors="replace"))
                await send(0x8, payload[:2])  # type: ignore[operator]
                self._fire(
                    {
                        "Event-Name": "CUSTOM",
                        "Event-Subclass": "mod_audio_stream::disconnect",
                        **self._channel(call),
                    },
                    json.dumps(
                        {
                            "status": "disconnected",
                            "message": {"code": code, "reason": call.stream_closed[1]},
                        }
                    ),
                )
                return
            if opcode == 0x1:
                self._on_text(call, payload.decode())

    def _on_text(self, call: StandinCall, text: str) -> None:
        try:
            msg = json.loads(text)
            data = msg["data"]
            ok = msg.get("type") == "streamAudio" and data.get("audioDataType") == "raw"
            rate = int(data["sampleRate"])
            audio = base64.b64decode(data["audioData"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok or rate not in (8000, 16000):
            self._fire(
                {
                    "Event-Name": "CUSTOM",
                    "Event-Subclass": "mod_audio_stream::json",
                    **self._channel(call),
                },
                text,
            )
            return
        ext = "r8" if rate == 8000 else "r16"
        path = self.tmpdir / f"{call.uuid}_{call.files}.tmp.{ext}"
        call.files += 1
        path.write_bytes(audio)
        self._fire(
            {
                "Event-Name": "CUSTOM",
                "Event-Subclass": "mod_audio_stream::play",
                **self._channel(call),
            },
            json.dumps(
                {"audioDataType": "raw", "sampleRate": rate, "file": str(path)},
                separators=(",", ":"),
            ),
        )

    async def _play(self, call: StandinCall) -> None:
        """The channel plays queued broadcasts in order, in real time."""
        last_stop = -1.0
        while True:
            if not call.queue:
                await asyncio.sleep(0.01)
                continue
            if call.now() - last_stop < SEAM_S:
                await asyncio.sleep(SEAM_S - (call.now() - last_stop))
            path = call.queue.pop(0)
            broken = call.broken
            pcm = _read(path)
            start = call.now()
            call.current = start
            self._fire(
                {"Event-Name": "PLAYBACK_START", "Playback-File-Path": path, **self._channel(call)}
            )
            played = 0
            while played < len(pcm) and call.broken == broken:
                pos = int(call.now() * 8000) * 2
                if len(call.heard) < pos:
                    call.heard += bytes(pos - len(call.heard))
                chunk = pcm[played : played + FRAME]
                call.heard[pos : pos + len(chunk)] = chunk
                played += FRAME
                await asyncio.sleep(max(0.0, start + played / 16000 - call.now()))
            last_stop = call.now()
            call.current = None
            call.plays.append((start, last_stop, path))
            self._fire(
                {"Event-Name": "PLAYBACK_STOP", "Playback-File-Path": path, **self._channel(call)}
            )

    async def _close_stream(self, call: StandinCall, code: int, reason: str) -> None:
        if call.writer is None or call.stream_closed is not None:
            return
        call.stream_closed = (code, reason)
        with contextlib.suppress(Exception):
            payload = struct.pack("!H", code) + reason.encode()
            await self._sender(call.writer)(0x8, payload)  # type: ignore[operator]

    def send_dtmf(self, uuid: str, digit: str) -> None:
        call = self.calls[uuid]
        self._fire(
            {
                "Event-Name": "DTMF",
                "DTMF-Digit": digit,
                "DTMF-Duration": "2000",
                **self._channel(call),
            }
        )

    async def hang_up(self, uuid: str, cause: str = "NORMAL_CLEARING") -> None:
        call = self.calls.get(uuid)
        if call is None or call.hung_up is not None:
            return
        call.hung_up = cause
        call.queue.clear()
        call.broken += 1
        await self._close_stream(call, 1000, "")
        self._fire(
            {"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Hangup-Cause": cause, **self._channel(call)}
        )
        linked = self._outbound_subs.get(uuid)
        if linked is not None:  # lingering: the notice, then the socket closes
            linked[0].write(
                f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {uuid}\n"
                f"Content-Disposition: linger\nChannel-Name: {self._channel(call)['Channel-Name']}\n"
                "Linger-Time: -1\nContent-Length: 0\n\n".encode()
            )
            linked[0].close()
        # mod_audio_stream deletes its files when the stream stops
        for i in range(call.files):
            for ext in ("r8", "r16"):
                with contextlib.suppress(OSError):
                    (self.tmpdir / f"{uuid}_{i}.tmp.{ext}").unlink()


def _read(path: str) -> bytes:
    """A file the module wrote (gone if the stream stopped meanwhile)."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def _loud(heard: bytearray, start: int, end: int) -> list[bool]:
    """Which 20 ms frames of what the caller heard, in [start, end), carry sound."""
    out = []
    for i in range(start, end):
        frame = np.frombuffer(bytes(heard[i * 320 : (i + 1) * 320]), dtype=np.int16)
        out.append(frame.size > 0 and float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) > 300)
    return out


async def hears(call: StandinCall, what: str, ms: int, wait_s: float = 60.0) -> None:
    """Wait on the stand-in caller's ear: ``heard`` (the agent has been
    speaking for ``ms``) or ``quiet`` (then silent for ``ms``)."""
    need = ms // 20
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if call.done.is_set():
            raise AssertionError(f"the call ended while the caller waited for {what}")
        now = int(call.now() / 0.02)
        recent = _loud(call.heard, max(0, now - need), now)
        if len(recent) == need and (all(recent) if what == "heard" else not any(recent)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the caller waited {wait_s:g} s for the agent to be {what}")

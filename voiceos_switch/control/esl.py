"""Call control over FreeSWITCH's Event Socket (inbound: we connect to it).

One connection serves every call in the bridge. It authenticates, subscribes
to the events the bridge uses (answer, DTMF, hangup and mod_audio_stream's
custom events), runs API commands one at a time in order, and reconnects with
backoff when FreeSWITCH goes away; commands in flight then fail with a clear
error and the calls' media carries on.

Why our own codec on asyncio rather than a library: greenswitch runs on
gevent, which cannot share the bridge's asyncio loop without a thread per
connection, and the asyncio ESL libraries on PyPI either pull in a framework
of their own or do not bound what they read. ESL is a small protocol
(``protocols/esl.py``, about 200 lines); owning it gives bounded parsing,
newline-safe commands and the same error handling as the AudioSocket side.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from .. import log
from ..errors import ControlError
from ..protocols import esl

logger = log.get(__name__)

EVENTS = (
    "CHANNEL_ANSWER",
    "CHANNEL_HANGUP_COMPLETE",
    "DTMF",
    "PLAYBACK_START",
    "PLAYBACK_STOP",
    "CUSTOM",
    "mod_audio_stream::connect",
    "mod_audio_stream::disconnect",
    "mod_audio_stream::error",
    "mod_audio_stream::json",
    "mod_audio_stream::play",
    "voiceos::handoff",
)


def fallback_group(call_id: str, slot: int) -> str:
    """The scheduler group of a call's fallback task (the dialplan starts
    slot 1: ``${sched_api(+3 voiceos-fallback-${uuid}-1 uuid_transfer ...)}``)."""
    return f"voiceos-fallback-{call_id}-{slot}"


class ESLError(ControlError):
    """A command failed or FreeSWITCH could not be reached."""


class ESLAuthError(ESLError):
    """FreeSWITCH refused the password."""


@dataclass
class FSChannel:
    uuid: str
    caller: str = ""
    called: str = ""
    answered: bool = False
    variables: dict[str, str] = field(default_factory=dict)


Listener = Callable[[esl.Event], None]


class _Connection:
    """One authenticated ESL connection: a reader task and a FIFO of replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = esl.Parser()
        self.replies: collections.deque[asyncio.Future[esl.Message]] = collections.deque()
        self._pending: collections.deque[esl.Message] = collections.deque()

    async def read_message(self, timeout: float | None = None) -> esl.Message:
        while not self._pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionResetError("FreeSWITCH closed the event socket")
            self._pending.extend(self.parser.feed(data))
        return self._pending.popleft()

    async def request(self, data: bytes, timeout: float) -> esl.Message:
        # the reply slot and the command go in together (no await between):
        # replies arrive in command order
        fut: asyncio.Future[esl.Message] = asyncio.get_running_loop().create_future()
        self.replies.append(fut)
        self.writer.write(data)
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    def fail_all(self, exc: BaseException) -> None:
        while self.replies:
            fut = self.replies.popleft()
            if not fut.done():
                fut.set_exception(exc)


class ESLController:
    """``await esl.api("uuid_break <uuid> all")`` and friends, plus events."""

    pbx = "freeswitch"

    def __init__(
        self,
        host: str,
        port: int,
        password: str | None,
        *,
        connect_timeout: float = 5.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self._password = password
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.channels: dict[str, FSChannel] = {}
        self.transferred: set[str] = set()
        self._listeners: list[Listener] = []
        self._conn: _Connection | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outbound: dict[str, _Connection] = {}
        self._outbound_server: asyncio.Server | None = None
        self._outbound_tasks: set[asyncio.Task[None]] = set()
        self._stream_url: Callable[[], str] | None = None
        self._closing = False
        self.connects = 0
        self.last_error: str | None = None

    # lifecycle ---------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._conn is not None and self._ready.is_set()

    def start(self) -> None:
        """Connect to FreeSWITCH's event socket (inbound), if a password is set."""
        if self._password is None:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="esl")

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self._outbound_server is not None:
            self._outbound_server.close()
        for conn in list(self._outbound.values()):
            conn.writer.close()
        for task in list(self._outbound_tasks):
            task.cancel()
        await asyncio.gather(*self._outbound_tasks, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop(ESLError("event socket closed"))

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._closing:
            try:
                await self._session()
                backoff = 0.5  # a session that ran resets the backoff
            except asyncio.CancelledError:
                raise
            except ESLAuthError as exc:
                self.last_error = str(exc)
                logger.error(log.kv(event="esl_auth_failed", error=exc, retry_s=self.max_backoff))
                backoff = self.max_backoff  # a wrong password will not fix itself soon
            except (OSError, TimeoutError, esl.ProtocolError, ConnectionError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                logger.warning(
                    log.kv(
                        event="esl_unavailable",
                        address=f"{self.host}:{self.port}",
                        error=self.last_error,
                        retry_s=backoff,
                    )
                )
            self._drop(ESLError(f"event socket lost: {self.last_error}"))
            if self._closing:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _drop(self, exc: BaseException) -> None:
        self._ready.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail_all(exc)
            conn.writer.close()

    async def _session(self) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.connect_timeout
        )
        conn = _Connection(reader, writer)
        try:
            hello = await conn.read_message(self.connect_timeout)
            if hello.content_type != "auth/request":
                raise esl.ProtocolError(f"expected auth/request, got {hello.content_type!r}")
            writer.write(esl.encode_auth(self._password or ""))
            reply = await conn.read_message(self.connect_timeout)
            if not reply.ok:
                raise ESLAuthError(
                    f"FreeSWITCH at {self.host}:{self.port} refused the password "
                    f"({reply.reply_text or 'no reply'}): check VOICEOS_ESL_PASSWORD"
                )
            writer.write(esl.encode_command("event json " + " ".join(EVENTS)))
            reply = await conn.read_message(self.connect_timeout)
            if not reply.ok:
                raise ESLError(f"event subscription refused: {reply.reply_text}")
        except BaseException:
            writer.close()
            raise
        self._conn = conn
        self.connects += 1
        self._ready.set()
        logger.info(log.kv(event="esl_connected", address=f"{self.host}:{self.port}"))
        while True:
            self._dispatch(conn, await conn.read_message())

    # outbound: FreeSWITCH connects to us, one connection per call -------------------
    async def serve_outbound(
        self, host: str, port: int, stream_url: Callable[[], str]
    ) -> tuple[str, int]:
        """Accept ``socket HOST:PORT async full`` connections from the dialplan;
        each call's stream is started, and its control runs, over its own
        connection. ``stream_url()`` gives the bridge's WebSocket address."""
        self._stream_url = stream_url
        self._outbound_server = await asyncio.start_server(self._outbound_client, host, port)
        sock = self._outbound_server.sockets[0].getsockname()
        logger.info(log.kv(event="esl_outbound_listening", address=f"{sock[0]}:{sock[1]}"))
        return sock[0], sock[1]

    def _outbound_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._outbound_call(reader, writer))
        self._outbound_tasks.add(task)
        task.add_done_callback(self._outbound_tasks.discard)

    async def _outbound_call(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = _Connection(reader, writer)
        uuid = ""
        try:
            writer.write(esl.encode_command("connect"))
            hello = await conn.read_message(self.connect_timeout)
            channel = {k: unquote(v) for k, v in hello.headers.items()}
            uuid = channel.get("Unique-ID") or channel.get("Channel-Unique-ID", "")
            if not uuid:
                raise esl.ProtocolError("the outbound connection named no channel")
            self._outbound[uuid] = conn
            self.channels[uuid] = FSChannel(
                uuid,
                caller=channel.get("Caller-Caller-ID-Number", ""),
                called=channel.get("Caller-Destination-Number", ""),
                answered=channel.get("Answer-State") == "answered",
            )
            reader_task = asyncio.get_running_loop().create_task(self._read_loop(conn))
            try:
                for command in ("myevents json", "linger"):
                    reply = await conn.request(esl.encode_command(command), self.connect_timeout)
                    if not reply.ok:
                        raise ESLError(f"{command} refused: {reply.reply_text}")
                if self._stream_url is not None:
                    meta = {
                        "uuid": uuid,
                        "rate": 8000,
                        "mix": "mono",
                        "caller": self.channels[uuid].caller,
                        "called": self.channels[uuid].called,
                    }
                    await self.start_stream(uuid, self._stream_url(), metadata=meta)
                logger.info(log.kv(event="esl_outbound_call"), extra={"call_id": uuid})
                await reader_task
            finally:
                reader_task.cancel()
        except (OSError, TimeoutError, ConnectionError, esl.ProtocolError, ESLError) as exc:
            logger.warning(
                log.kv(event="esl_outbound_closed", error=str(exc) or type(exc).__name__),
                extra={"call_id": uuid or "-"},
            )
        finally:
            if uuid and self._outbound.get(uuid) is conn:
                del self._outbound[uuid]
            conn.fail_all(ESLError("the call's event socket closed"))
            writer.close()

    async def _read_loop(self, conn: _Connection) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                self._dispatch(conn, await conn.read_message())

    def _dispatch(self, conn: _Connection, msg: esl.Message) -> None:
        ctype = msg.content_type
        if ctype in ("api/response", "command/reply"):
            if conn.replies:
                fut = conn.replies.popleft()
                if not fut.done():
                    fut.set_result(msg)
            return
        if ctype == "text/disconnect-notice":
            raise ConnectionResetError("FreeSWITCH sent a disconnect notice")
        try:
            event = msg.event()
        except esl.ProtocolError as exc:
            logger.warning(log.kv(event="esl_bad_event", error=exc))
            return
        if event is None:
            return
        self._track(event)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:  # one listener's bug must not stop the socket
                logger.exception(log.kv(event="esl_listener_error", name=event.name))

    def _track(self, event: esl.Event) -> None:
        uuid = event.uuid
        if not uuid:
            return
        if event.name == "CHANNEL_ANSWER":
            self.channels[uuid] = FSChannel(
                uuid,
                caller=event.get("Caller-Caller-ID-Number"),
                called=event.get("Caller-Destination-Number"),
                answered=True,
            )
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            self.channels.pop(uuid, None)
            self.transferred.discard(uuid)

    # commands -------------------------------------------------------------------
    def _connection_for(self, command: str, call_id: str = "") -> _Connection | None:
        """A call's own outbound connection for its ``uuid_*`` commands (and
        any other command made for it, ``call_id``), else the inbound one."""
        parts = command.split(" ", 2)
        if len(parts) > 1 and parts[0].startswith("uuid_") and parts[1] in self._outbound:
            return self._outbound[parts[1]]
        if call_id in self._outbound:
            return self._outbound[call_id]
        return self._conn if self._ready.is_set() else None

    async def api(self, command: str, timeout: float = 5.0, call_id: str = "") -> str:
        """Run an API command; its text on success, :class:`ESLError` otherwise.
        ``call_id``: the command is for that call (its outbound connection, if
        it has one, carries it)."""
        conn = self._connection_for(command, call_id)
        if conn is None:
            raise ESLError(f"not connected to FreeSWITCH at {self.host}:{self.port}")
        try:
            reply = await conn.request(esl.encode_api(command), timeout)
        except TimeoutError as exc:
            raise ESLError(f"{command.split()[0]}: no reply within {timeout:g} s") from exc
        text = reply.body.decode("utf-8", "replace").strip()
        if not reply.ok:
            raise ESLError(f"{command.split()[0]} failed: {text or reply.reply_text}")
        return text

    def reaches(self, call_id: str) -> bool:
        """Whether commands for this call can reach FreeSWITCH now."""
        return self._connection_for("", call_id) is not None

    async def send_event(
        self, subclass: str, headers: dict[str, str], body: str = "", call_id: str = ""
    ) -> None:
        """Fire a CUSTOM event to every subscriber. It must not carry
        ``Unique-ID``: FreeSWITCH then queues it on that channel instead,
        where a playback in progress consumes it (and what is fired later
        has no ``Event-Name``). The call goes in ``Voiceos-Call-UUID``."""
        if "Unique-ID" in headers:
            raise ValueError("an event with Unique-ID is queued on the channel, not fired")
        if call_id:
            headers = {"Voiceos-Call-UUID": call_id, **headers}
        conn = self._connection_for("", call_id)
        if conn is None:
            raise ESLError("not connected to FreeSWITCH")
        data = esl.encode_command(
            "sendevent CUSTOM",
            {"Event-Subclass": subclass, **{k: esl.one_line(v) for k, v in headers.items()}},
            body.encode(),
        )
        reply = await conn.request(data, 5.0)
        if not reply.ok:
            raise ESLError(f"sendevent failed: {reply.reply_text}")

    # the bridge's call control, as on Asterisk ----------------------------------
    async def set_var(self, call_id: str, name: str, value: str) -> None:
        await self.api(f"uuid_setvar {call_id} {name} {esl.one_line(value) or '_undef_'}")

    async def hangup(self, call_id: str, cause: str = "NORMAL_CLEARING") -> None:
        await self.api(f"uuid_kill {call_id} {cause}")

    async def redirect(self, call_id: str, target: str, context: str = "voiceos-humans") -> None:
        await self.api(f"uuid_transfer {call_id} {target} XML {context}")
        self.transferred.add(call_id)

    async def start_recording(self, call_id: str, path: str, options: str = "") -> None:
        await self.api(f"uuid_record {call_id} start {path}")

    async def stop_recording(self, call_id: str, path: str = "all") -> None:
        await self.api(f"uuid_record {call_id} stop {path}")

    async def break_playback(self, call_id: str) -> None:
        await self.api(f"uuid_break {call_id} all")

    async def schedule_fallback(
        self, call_id: str, after_s: float, target: tuple[str, str, str], slot: int
    ) -> None:
        """(Re)schedule FreeSWITCH's own move of the call to ``target``
        (extension, dialplan, context) ``after_s`` from now. Two task groups
        per call take turns (``slot`` 0 or 1): the new task is added before
        the other group's is deleted, so one is always pending."""
        extension, dialplan, context = target
        await self.api(
            f"sched_api +{max(1, round(after_s))} {fallback_group(call_id, slot)} "
            f"uuid_transfer {call_id} {extension} {dialplan} {context}",
            call_id=call_id,
        )
        await self.api(f"sched_del {fallback_group(call_id, 1 - slot)}", call_id=call_id)

    async def cancel_fallback(self, call_id: str) -> None:
        for slot in (0, 1):
            await self.api(f"sched_del {fallback_group(call_id, slot)}", call_id=call_id)

    async def broadcast(self, call_id: str, path: str) -> None:
        await self.api(f"uuid_broadcast {call_id} {path} aleg")

    async def start_stream(
        self,
        call_id: str,
        url: str,
        mix: str = "mono",
        rate: int = 8000,
        metadata: dict[str, object] | None = None,
    ) -> None:
        """Stream the call to ``url`` (the bridge's, with its token), naming the
        call and its rate in the URL so the bridge knows it from the start."""
        meta = json.dumps(metadata or {"uuid": call_id}, separators=(",", ":"))
        url = f"{url.rstrip('/')}/{call_id}/{rate}"
        await self.api(f"uuid_audio_stream {call_id} start {url} {mix} {rate // 1000}k {meta}")

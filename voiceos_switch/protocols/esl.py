"""FreeSWITCH Event Socket (ESL), sans I/O.

A message is a block of ``Name: value`` lines ended by a blank line, then
``Content-Length`` bytes of body when that header is present. Events arrive
as such a message whose body is the event: ``text/event-plain`` (again a
header block, values URL-encoded, with an optional body of its own) or
``text/event-json`` (one JSON object, the event's body under ``_body``).

:class:`Parser` takes bytes in any chunking and returns whole messages;
anything malformed or over the size caps raises :class:`ProtocolError`.
The encoders refuse line breaks inside a command, so text that came from a
caller can never smuggle a second command onto the socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import unquote

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024


class ProtocolError(ValueError):
    """The peer sent something that is not ESL."""


@dataclass(frozen=True, slots=True)
class Message:
    headers: dict[str, str]
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")

    @property
    def ok(self) -> bool:
        """A command reply or API response that reports success."""
        if self.content_type == "api/response":
            return not self.body.startswith(b"-ERR") and not self.body.startswith(b"-USAGE")
        return self.reply_text.startswith("+OK")

    def event(self) -> Event | None:
        """The event this message carries, if it is an event."""
        if self.content_type == "text/event-json":
            return parse_json_event(self.body)
        if self.content_type == "text/event-plain":
            return parse_plain_event(self.body)
        return None


@dataclass(frozen=True, slots=True)
class Event:
    headers: dict[str, str]
    body: str = ""
    raw: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.headers.get("Event-Name", "")

    @property
    def subclass(self) -> str:
        return self.headers.get("Event-Subclass", "")

    @property
    def uuid(self) -> str:
        return self.headers.get("Unique-ID", "") or self.headers.get("Channel-Call-UUID", "")

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


def _header_block(block: bytes, decode_values: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        try:
            key = name.strip().decode("ascii")
            text = value.strip().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"undecodable header line {line[:80]!r}") from exc
        headers[key] = unquote(text) if decode_values else text
    return headers


def _content_length(headers: dict[str, str], cap: int) -> int:
    raw = headers.get("Content-Length")
    if raw is None:
        return 0
    if not raw.isdigit():
        raise ProtocolError(f"bad Content-Length {raw[:40]!r}")
    n = int(raw)
    if n > cap:
        raise ProtocolError(f"body of {n} bytes is over the {cap}-byte limit")
    return n


class Parser:
    """Incremental: ``feed(bytes) -> [Message]``."""

    def __init__(self, max_header: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY_BYTES) -> None:
        self.max_header = max_header
        self.max_body = max_body
        self._buf = bytearray()
        self._headers: dict[str, str] | None = None
        self._need = 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while True:
            if self._headers is None:
                end = self._buf.find(b"\n\n")
                if end < 0:
                    if len(self._buf) > self.max_header:
                        raise ProtocolError(f"header block over {self.max_header} bytes")
                    return out
                if end > self.max_header:
                    raise ProtocolError(f"header block over {self.max_header} bytes")
                block = bytes(self._buf[:end])
                del self._buf[: end + 2]
                if not block.strip():
                    continue  # stray blank lines between messages
                headers = _header_block(block, decode_values=False)
                self._need = _content_length(headers, self.max_body)
                self._headers = headers
            if len(self._buf) < self._need:
                return out
            body = bytes(self._buf[: self._need])
            del self._buf[: self._need]
            out.append(Message(self._headers, body))
            self._headers = None
            self._need = 0


def parse_plain_event(body: bytes) -> Event:
    head, sep, rest = body.partition(b"\n\n")
    headers = _header_block(head, decode_values=True)
    n = _content_length(headers, MAX_BODY_BYTES)
    inner = rest[:n] if sep else b""
    if len(inner) < n:
        raise ProtocolError("event body shorter than its Content-Length")
    return Event(headers, inner.decode("utf-8", "replace"))


def parse_json_event(body: bytes) -> Event:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"event is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("a JSON event must be an object")
    headers = {
        str(k): str(v) for k, v in obj.items() if k != "_body" and not isinstance(v, (dict, list))
    }
    return Event(headers, str(obj.get("_body", "")), obj)


def _line(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"an ESL command cannot contain a line break: {text[:60]!r}")
    return text


def encode_command(command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """``command`` and optional headers, a blank line, and the body if any."""
    lines = [_line(command)]
    for name, value in (headers or {}).items():
        lines.append(f"{_line(name)}: {_line(value)}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + body


def encode_api(command: str) -> bytes:
    return encode_command(f"api {command}")


def encode_auth(password: str) -> bytes:
    return encode_command(f"auth {password}")


def encode_execute(app: str, arg: str = "", uuid: str | None = None) -> bytes:
    """``sendmsg``: run a dialplan application on a channel."""
    headers = {"call-command": "execute", "execute-app-name": app}
    if arg:
        headers["execute-app-arg"] = arg
    return encode_command(f"sendmsg {uuid}" if uuid else "sendmsg", headers)


def one_line(text: str) -> str:
    """Text made safe for one ESL command argument (channel variables)."""
    return " / ".join(part.strip() for part in text.replace("\r", "\n").split("\n") if part.strip())

"""A PBX that is up but broken, on a loopback UDP port: it answers OPTIONS
with 200 (so a SIP proxy's probe finds it healthy) and then fails every
INVITE with a 5xx (``mode="fail"``) or never answers it (``mode="silent"``)."""

from __future__ import annotations

import asyncio
from typing import Any


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: BrokenPbx) -> None:
        self.owner = owner
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode("utf-8", "replace")
        head, _, _ = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        method = lines[0].split(" ", 1)[0]
        if method.startswith("SIP/"):
            return  # a response: nothing to do
        keep = [
            line
            for line in lines[1:]
            if line.split(":", 1)[0].strip().lower()
            in ("via", "v", "from", "f", "call-id", "i", "cseq")
        ]
        to = next((x for x in lines[1:] if x.lower().startswith(("to:", "t:"))), "To: <sip:x>")
        if method == "OPTIONS":
            self.owner.options += 1
            self._reply(addr, "200 OK", keep, to)
        elif method == "INVITE":
            self.owner.invites += 1
            if self.owner.mode == "fail":
                self._reply(addr, "100 Trying", keep, to)
                self._reply(addr, "503 Service Unavailable", keep, to + ";tag=broken")

    def _reply(self, addr: tuple[str, int], status: str, headers: list[str], to: str) -> None:
        assert self.transport is not None
        msg = "\r\n".join([f"SIP/2.0 {status}", *headers, to, "Content-Length: 0", "", ""])
        self.transport.sendto(msg.encode(), addr)


class BrokenPbx:
    def __init__(self, port: int, mode: str) -> None:
        if mode not in ("fail", "silent"):
            raise ValueError(mode)
        self.port, self.mode = port, mode
        self.options = self.invites = 0
        self._transport: asyncio.BaseTransport | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> BrokenPbx:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=("127.0.0.1", self.port)
        )
        self._transport = transport
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

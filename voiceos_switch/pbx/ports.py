"""Which program holds a loopback port: named in the errors of whatever
refuses to start beside it (the managed Asterisk, the lab)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Port:
    proto: str  # "tcp" or "udp"
    port: int
    what: str
    setting: str  # the environment variable that moves it

    def __str__(self) -> str:
        return f"127.0.0.1:{self.port}/{self.proto} ({self.what})"


def _socket_inodes(proto: str, port: int) -> set[str]:
    """Inodes of sockets bound to ``port`` (any address) in /proc/net."""
    inodes = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) != port:
                continue
            # tcp: only listening sockets (0A); udp: every bound socket
            if proto == "tcp" and state != "0A":
                continue
            inodes.add(inode)
    return inodes


def holder(port: Port) -> str | None:
    """Who holds ``port``: ``"pid 42 (asterisk)"``, ``"another program"``, or
    None when it is free."""
    kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port.port))
            return None
        except OSError:
            pass
    inodes = _socket_inodes(port.proto, port.port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
        except OSError:
            continue
    return "another program"

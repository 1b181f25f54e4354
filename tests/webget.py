"""A plain HTTP GET as a script would make it, with a bearer token."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """(status, body); an HTTP error is a status, not an exception."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""

"""Call control as the rest of the package sees it: interfaces, no wire.

:class:`CallControl` is what the agent asks of a PBX about one call; AMI
(``control/ami.py``) and the Event Socket (``control/esl.py``) implement it.
:class:`PlaybackControl` is what a transport whose PBX plays files and runs
the call's fallback (FreeSWITCH's mod_audio_stream) needs of its control
connection: the transport is given one and never imports a controller.
Failures raise :class:`voiceos_switch.errors.ControlError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class CallControl(Protocol):
    pbx: str

    async def wait_ready(self, timeout: float = 5.0) -> bool: ...

    async def set_var(self, call_id: str, name: str, value: str) -> None: ...

    async def redirect(
        self, call_id: str, target: str, context: str = "voiceos-humans"
    ) -> None: ...

    async def hangup(self, call_id: str) -> None: ...

    async def start_recording(self, call_id: str, path: str, options: str = "") -> None: ...

    async def stop_recording(self, call_id: str) -> None: ...


class PlaybackControl(CallControl, Protocol):
    #: calls handed to a person (their media ends; the call does not)
    transferred: set[str]
    last_error: str | None

    def reaches(self, call_id: str) -> bool: ...

    def add_listener(self, listener: Callable[[Any], None]) -> None: ...

    async def broadcast(self, call_id: str, path: str) -> None: ...

    async def break_playback(self, call_id: str) -> None: ...

    async def schedule_fallback(
        self, call_id: str, after_s: float, target: tuple[str, str, str], slot: int
    ) -> None: ...

    async def cancel_fallback(self, call_id: str) -> None: ...

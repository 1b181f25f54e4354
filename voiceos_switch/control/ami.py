"""Call control over the Asterisk Manager Interface (panoramisk underneath).

The dialplan publishes each call's AudioSocket UUID in a ``VoiceosCall``
UserEvent and the ``VOICEOS_CALL_ID`` channel variable; this controller keeps
the map from UUID to channel, so the agent acts on calls by their media id.
It reconnects with exponential backoff when AMI drops.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from panoramisk import Manager

from .. import log
from ..errors import ControlError

logger = log.get(__name__)


class AMIError(ControlError):
    pass


@dataclass
class ChannelInfo:
    call_id: str
    channel: str
    uniqueid: str = ""
    caller: str = ""
    called: str = ""
    rate: int | None = None
    #: the Asterisk that announced the call (its AMI address)
    pbx_address: str = ""


def one_line(text: str, limit: int = 2000) -> str:
    """AMI header values cannot span lines."""
    flat = " / ".join(part.strip() for part in text.splitlines() if part.strip())
    return flat[:limit]


class _Manager(Manager):  # type: ignore[misc]
    """panoramisk's Manager with its fixed-delay reconnect handed to the owner."""

    def __init__(self, owner: AMIController, **config: Any) -> None:
        super().__init__(**config)
        self._owner = owner

    def connection_made(self, f: asyncio.Future[Any]) -> None:
        if f.cancelled() or f.exception() is not None:
            self._owner._lost(f.exception() if not f.cancelled() else None)
            return
        super().connection_made(f)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connected = False
        pinger: asyncio.TimerHandle | None = getattr(self, "pinger", None)
        if pinger is not None:
            pinger.cancel()
            self.pinger = None
        self._owner._lost(exc)


class AMIController:
    pbx = "asterisk"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5038,
        username: str = "voiceos",
        secret: str | None = None,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if not secret:
            raise AMIError(
                "no AMI secret: set VOICEOS_AMI_SECRET (the managed Asterisk writes "
                "one on `voiceos-switch asterisk up`)"
            )
        self.host, self.port, self.username = host, port, username
        self._secret = secret
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._backoff = backoff_initial
        self._manager: _Manager | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._reconnect: asyncio.TimerHandle | None = None
        self.channels: dict[str, ChannelInfo] = {}
        self._waiters: dict[str, list[asyncio.Future[ChannelInfo]]] = {}
        self._listeners: list[Callable[[dict[str, str]], None]] = []
        self.connects = 0
        self.login_failures = 0

    # connection ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        """Begin connecting; never raises if Asterisk is not there yet."""
        self._closing = False
        self._connect()

    def _connect(self) -> None:
        self._reconnect = None
        if self._closing:
            return
        if self._manager is not None:
            self._manager.close()
        manager = _Manager(
            self,
            host=self.host,
            port=self.port,
            username=self.username,
            secret=self._secret,
            ping_delay=10,
            ping_interval=10,
            log=log.get("voiceos_switch.control.ami.panoramisk"),
            on_login=self._logged_in,
            loop=asyncio.get_running_loop(),
        )
        manager.register_event("*", self._on_event)
        self._manager = manager
        task = manager.connect()
        task.add_done_callback(lambda t: self._check_login(manager))

    def _check_login(self, manager: _Manager) -> None:
        fut = manager.authenticated_future
        if fut is None:
            return

        def done(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            if not manager.authenticated and not self._closing:
                self.login_failures += 1
                logger.error(
                    log.kv(
                        event="ami_login_failed",
                        user=self.username,
                        hint="check VOICEOS_AMI_SECRET against manager.conf",
                    )
                )
                manager.close()

        fut.add_done_callback(done)

    def _logged_in(self, manager: _Manager) -> None:
        self.connects += 1
        self._backoff = self.backoff_initial
        self._ready.set()
        logger.info(log.kv(event="ami_connected", address=f"{self.host}:{self.port}"))

    def _lost(self, exc: BaseException | None) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        if self._closing or self._reconnect is not None:
            return
        delay = self._backoff * (1 + random.random() * 0.2)
        self._backoff = min(self._backoff * 2, self.backoff_max)
        level = logger.warning if was_ready else logger.info
        level(log.kv(event="ami_unavailable", error=exc or "closed", retry_in_s=round(delay, 2)))
        self._reconnect = asyncio.get_running_loop().call_later(delay, self._connect)

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self._closing = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None
        if self._manager is not None:
            self._manager.close()
            self._manager = None
        self._ready.clear()

    # events ----------------------------------------------------------------
    def add_listener(self, callback: Callable[[dict[str, str]], None]) -> None:
        self._listeners.append(callback)

    def _on_event(self, _manager: Manager, message: Any) -> None:
        event = {str(k): str(v) for k, v in dict(message).items()}
        name = event.get("Event", "")
        if name == "UserEvent" and event.get("UserEvent") == "VoiceosCall":
            info = ChannelInfo(
                call_id=event.get("CallID", ""),
                channel=event.get("Channel", ""),
                uniqueid=event.get("Uniqueid", ""),
                caller=event.get("Caller", ""),
                called=event.get("Called", ""),
                rate=int(event["Rate"]) if event.get("Rate", "").isdigit() else None,
                pbx_address=f"{self.host}:{self.port}",
            )
            if info.call_id:
                self.channels[info.call_id] = info
                for fut in self._waiters.pop(info.call_id, []):
                    if not fut.done():
                        fut.set_result(info)
        elif name == "Hangup":
            uniqueid = event.get("Uniqueid")
            for call_id, info in list(self.channels.items()):
                if info.uniqueid == uniqueid:
                    del self.channels[call_id]
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception(log.kv(event="ami_listener_error"))

    # actions ---------------------------------------------------------------
    async def action(self, action: dict[str, str], timeout: float = 5.0) -> Any:
        if not await self.wait_ready(timeout):
            raise AMIError(f"AMI at {self.host}:{self.port} is not connected")
        assert self._manager is not None
        reply = await asyncio.wait_for(self._manager.send_action(action), timeout)
        first = reply[0] if isinstance(reply, list) else reply
        if str(first.get("Response", "")).lower() == "error":
            raise AMIError(f"{action.get('Action')} failed: {first.get('Message', '')}")
        return reply

    async def channel_for(self, call_id: str, timeout: float = 2.0) -> ChannelInfo:
        """The channel carrying AudioSocket call ``call_id``."""
        info = self.channels.get(call_id)
        if info is not None:
            return info
        fut: asyncio.Future[ChannelInfo] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(call_id, []).append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), min(timeout, 0.5))
        except TimeoutError:
            pass
        found = await self._search(call_id, timeout)
        if found is None:
            raise AMIError(f"no Asterisk channel carries call {call_id}")
        self.channels[call_id] = found
        return found

    async def _search(self, call_id: str, timeout: float) -> ChannelInfo | None:
        """Fallback: list channels and read each one's VOICEOS_CALL_ID."""
        reply = await self.action({"Action": "CoreShowChannels"}, timeout)
        messages = reply if isinstance(reply, list) else [reply]
        for msg in messages:
            if msg.get("Event") != "CoreShowChannel":
                continue
            channel = str(msg.get("Channel"))
            try:
                value = await self.get_var(channel, "VOICEOS_CALL_ID")
            except AMIError:
                continue
            if value == call_id:
                return ChannelInfo(call_id, channel, str(msg.get("Uniqueid", "")))
        return None

    async def get_var(self, channel: str, name: str) -> str:
        reply = await self.action({"Action": "Getvar", "Channel": channel, "Variable": name})
        return str(reply.get("Value", "") or "")

    async def set_var(self, call_id: str, name: str, value: str) -> None:
        info = await self.channel_for(call_id)
        await self.action(
            {
                "Action": "Setvar",
                "Channel": info.channel,
                "Variable": name,
                "Value": one_line(value),
            }
        )

    async def hangup(self, call_id: str) -> None:
        info = await self.channel_for(call_id)
        await self.action({"Action": "Hangup", "Channel": info.channel, "Cause": "16"})

    async def redirect(
        self, call_id: str, exten: str, context: str = "voiceos-humans", priority: int = 1
    ) -> None:
        info = await self.channel_for(call_id)
        await self.action(
            {
                "Action": "Redirect",
                "Channel": info.channel,
                "Context": context,
                "Exten": exten,
                "Priority": str(priority),
            }
        )

    async def start_recording(self, call_id: str, path: str, options: str = "") -> None:
        info = await self.channel_for(call_id)
        action = {"Action": "MixMonitor", "Channel": info.channel, "File": path}
        if options:
            action["Options"] = options
        await self.action(action)

    async def stop_recording(self, call_id: str) -> None:
        info = await self.channel_for(call_id)
        await self.action({"Action": "StopMixMonitor", "Channel": info.channel})


class AMIPool:
    """Call control over several Asterisks: a bridge that serves a pool of
    PBXs keeps an AMI connection to each, and acts on a call through the one
    whose dialplan announced it (its VoiceosCall event)."""

    pbx = "asterisk"

    def __init__(self, controllers: list[AMIController]) -> None:
        if not controllers:
            raise AMIError("an AMI pool needs at least one Asterisk")
        self.controllers = controllers

    @property
    def channels(self) -> dict[str, ChannelInfo]:
        merged: dict[str, ChannelInfo] = {}
        for controller in self.controllers:
            merged.update(controller.channels)
        return merged

    @property
    def connected(self) -> bool:
        return any(c.connected for c in self.controllers)

    def start(self) -> None:
        for controller in self.controllers:
            controller.start()

    async def close(self) -> None:
        for controller in self.controllers:
            await controller.close()

    async def wait_ready(self, timeout: float = 5.0) -> bool:
        """True when every Asterisk of the pool is connected."""
        results = await asyncio.gather(*(c.wait_ready(timeout) for c in self.controllers))
        return all(results)

    def add_listener(self, callback: Callable[[dict[str, str]], None]) -> None:
        for controller in self.controllers:
            controller.add_listener(callback)

    async def _owner(self, call_id: str, timeout: float = 2.0) -> AMIController:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, 0.5)
        while True:
            for controller in self.controllers:
                if call_id in controller.channels:
                    return controller
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        # no announcement seen (an event lost in a reconnect): ask each
        for controller in self.controllers:
            if not controller.connected:
                continue
            try:
                await controller.channel_for(call_id, timeout)
                return controller
            except (AMIError, TimeoutError):
                continue
        raise AMIError(f"no Asterisk of the pool carries call {call_id}")

    async def channel_for(self, call_id: str, timeout: float = 2.0) -> ChannelInfo:
        controller = await self._owner(call_id, timeout)
        return await controller.channel_for(call_id, timeout)

    async def set_var(self, call_id: str, name: str, value: str) -> None:
        await (await self._owner(call_id)).set_var(call_id, name, value)

    async def hangup(self, call_id: str) -> None:
        await (await self._owner(call_id)).hangup(call_id)

    async def redirect(
        self, call_id: str, exten: str, context: str = "voiceos-humans", priority: int = 1
    ) -> None:
        await (await self._owner(call_id)).redirect(call_id, exten, context, priority)

    async def start_recording(self, call_id: str, path: str, options: str = "") -> None:
        await (await self._owner(call_id)).start_recording(call_id, path, options)

    async def stop_recording(self, call_id: str) -> None:
        await (await self._owner(call_id)).stop_recording(call_id)

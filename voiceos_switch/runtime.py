"""The runtime that serves an agent's calls: one frame clock for every
call, the AudioSocket server (Asterisk) and the mod_audio_stream server
(FreeSWITCH), call control (AMI, the Event Socket), and the bridge's own
servers and feeds (Prometheus /metrics, the live dashboard, the Redis event
stream, traces, the analysis outbox).

The SDK's :class:`~voiceos_switch.agent.Agent` is configuration, tools,
handlers and what one call does; this is what runs it, given the agent as
a :class:`Served` (it imports no part of the SDK).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
from collections.abc import Callable
from typing import Any, Protocol

from . import events as ev
from . import log
from .control.ami import AMIController, AMIPool
from .control.esl import ESLController
from .errors import ConfigurationError
from .media import CallMedia
from .settings import Settings, is_loopback, split_hostport

logger = log.get(__name__)


#: how often records kept while the store was down are offered to it again
UNSAVED_RETRY_S = 2.0


class Served(Protocol):
    """What the runtime needs of the agent it serves."""

    settings: Settings
    subscribers: list[Callable[[ev.Event], Any]]
    calls: dict[str, Any]
    dropped_events: int
    variants: list[Any]

    @property
    def store(self) -> Any: ...

    async def handle_call(self, media: CallMedia) -> None: ...

    async def load_models(self) -> None: ...

    def live_calls(self) -> list[dict[str, Any]]: ...


class Runtime:
    def __init__(self, agent: Served) -> None:
        self.agent = agent
        self.settings = agent.settings
        #: call control over AMI (Asterisk) and the Event Socket (FreeSWITCH)
        self.control: AMIController | AMIPool | None = None
        self.esl: ESLController | None = None
        self.server: Any = None
        self.stream_server: Any = None
        self.metrics_server: Any = None
        #: the bridge's Prometheus metrics (made when they are served)
        self.metrics: Any = None
        self.dashboard: Any = None
        #: the Redis Stream this bridge's events go to (with VOICEOS_REDIS_URL)
        self.event_stream: Any = None
        #: analysis jobs stored and not yet queued, as of the outbox's last pass
        self.outbox_backlog: int | None = None
        self._outbox_wakeup: asyncio.Event | None = None
        #: taking no new call, finishing the ones in progress (SIGTERM)
        self.draining = False
        self._cpu: Any = None

    def record_written(self) -> None:
        """A call's record is stored: the outbox may queue its analyses now."""
        if self._outbox_wakeup is not None:
            self._outbox_wakeup.set()

    def _ami(self, secret: str) -> AMIController | AMIPool:
        s = self.settings
        if not s.ami_hosts:
            return AMIController(s.ami_host, s.ami_port, s.ami_username, secret)
        controllers = []
        for address in s.ami_hosts.split(","):
            host, port = split_hostport(address.strip())
            controllers.append(AMIController(host, port, s.ami_username, secret))
        return AMIPool(controllers)

    async def run(
        self,
        ready: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
        control: bool = True,
        drain: asyncio.Event | None = None,
    ) -> None:
        """Serve calls until ``stop`` is set (or forever). ``control=False``
        runs without AMI (no transfers or PBX-side recording). ``drain``:
        when set, take no new call, finish the ones in progress (for at most
        ``drain_timeout_s``, or until ``stop``), then stop."""
        from .audio.pacer import FrameClock
        from .audio.recorder import WavRecorder
        from .transports.audiosocket import AudioSocketServer

        s = self.settings
        host, port = split_hostport(s.audiosocket)
        if not is_loopback(host) and not s.allow_remote_audiosocket:
            raise ConfigurationError(
                f"refusing to listen on {host}: AudioSocket has no authentication. Set "
                "VOICEOS_ALLOW_REMOTE_AUDIOSOCKET=true and firewall the port to your PBX."
            )
        secret = s.resolved_ami_secret() if control else None
        if secret:
            self.control = self._ami(secret)
            self.control.start()
        elif control:
            logger.warning(
                log.kv(
                    event="no_call_control",
                    hint="set VOICEOS_AMI_SECRET to enable transfers and recording",
                )
            )
        rec_dir = s.resolved_recordings_dir
        recorder = WavRecorder(rec_dir) if rec_dir is not None else None
        clock = FrameClock()  # one 20 ms tick for every call, whichever PBX it came from
        server = AudioSocketServer(
            self.agent.handle_call,
            clock=clock,
            max_calls=s.max_calls,
            handshake_timeout=s.handshake_timeout_s,
            max_frame_bytes=s.max_frame_bytes,
            lead_frames=s.pacer_lead_frames,
            max_send_buffer_ms=s.max_send_buffer_ms,
            recorder=recorder,
            rate_hint=self._rate_hint,
        )
        self.server = server
        await server.start(host, port)
        outbox: asyncio.Task[None] | None = None
        unsaved: asyncio.Task[None] | None = None
        agent_check: asyncio.Server | None = None
        stream: Any = None
        tracing: Any = None
        tracer_provider: Any = None
        try:
            if s.redis_url and s.event_stream:
                from .eventstream import EventStream

                stream = self.event_stream = EventStream(s.redis_url, bridge=s.resolved_bridge_name)
                self.agent.subscribers.append(stream.publish)
            if s.metrics:
                self.metrics_server = await self._serve_metrics(clock)
            if s.agent_check:
                from .loadcheck import serve_agent_check

                check_host, check_port = split_hostport(s.agent_check)
                agent_check = await serve_agent_check(check_host, check_port, self.load)
            if s.dashboard:
                self.dashboard = await self._serve_dashboard()
            if s.otel:
                from .tracing import Tracing, exporting_provider

                tracer_provider = exporting_provider()
                tracing = Tracing(tracer_provider)
                self.agent.subscribers.append(tracing.observe)
            await asyncio.to_thread(lambda: self.agent.store)  # migrate before the first call ends
            unsaved = asyncio.create_task(self._store_unsaved(), name="unsaved-records")
            if s.redis_url:
                self._outbox_wakeup = asyncio.Event()
                outbox = asyncio.create_task(self._run_outbox(), name="outbox")
            if s.freeswitch_stream:
                self.stream_server = await self._start_freeswitch(recorder, clock)
            # listening already: a call that comes while the models load is
            # held (its audio queued) and answered once they are ready
            await self.agent.load_models()
            # what is loaded by now lives as long as the bridge: the cyclic
            # collector need not scan it again (a full collection over the
            # models' and libraries' objects stalls the loop for 30 ms and
            # more, and retained events make full collections come often)
            gc.freeze()
            logger.info(
                log.kv(
                    event="bridge_ready", bridge=s.resolved_bridge_name, audiosocket=s.audiosocket
                )
            )
            if ready is not None:
                ready.set()
            await self._serve_until(stop or asyncio.Event(), drain)
        finally:
            gc.unfreeze()  # the objects can be freed again at shutdown
            if agent_check is not None:
                agent_check.close()
            await server.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
            if self.dashboard is not None:
                self.agent.subscribers.remove(self.dashboard.feed.publish)
                await self.dashboard.feed.close()  # open event streams end
                await self.dashboard.close()
            if stream is not None:
                self.agent.subscribers.remove(stream.publish)
                await stream.close()
            if tracing is not None:
                self.agent.subscribers.remove(tracing.observe)
                flush = getattr(tracer_provider, "force_flush", None)
                if flush is not None:
                    await asyncio.to_thread(flush, 5000)
            if unsaved is not None:
                unsaved.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await unsaved
            if outbox is not None:
                await asyncio.sleep(0)  # let a record written just now reach the queue
                outbox.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await outbox
            if self.stream_server is not None:
                await self.stream_server.close()
            if self.control is not None:
                await self.control.close()
            if self.esl is not None:
                await self.esl.close()

    def load(self) -> Any:
        """Calls in progress against the limit, CPU, and whether draining."""
        from .loadcheck import CpuMeter, Load

        if self._cpu is None:
            self._cpu = CpuMeter()
        return Load(
            active=len(self.agent.calls),
            limit=self.settings.max_calls,
            cpu_pct=self._cpu.read(),
            draining=self.draining,
        )

    async def _serve_until(self, stop: asyncio.Event, drain: asyncio.Event | None) -> None:
        waits = [asyncio.ensure_future(stop.wait())]
        if drain is not None:
            waits.append(asyncio.ensure_future(drain.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if stop.is_set():
            return
        # draining: the PBX's next AudioSocket connection is closed at once
        # (FreeSWITCH's stream connect refused), so its dialplan moves on to
        # another bridge; the calls here finish as they would
        self.draining = True
        self.server.stop_accepting()
        if self.stream_server is not None:
            self.stream_server.stop_accepting()
        limit = self.settings.drain_timeout_s
        logger.info(log.kv(event="draining", active=len(self.agent.calls), timeout_s=limit))
        deadline = asyncio.get_running_loop().time() + limit
        while self.agent.calls and not stop.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                logger.warning(
                    log.kv(event="drain_timeout", active=len(self.agent.calls), timeout_s=limit)
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, 0.2))
        logger.info(log.kv(event="drained"))

    async def _serve_metrics(self, clock: Any) -> Any:
        """Prometheus ``/metrics`` at ``VOICEOS_METRICS`` (loopback, or with a token)."""
        from .metrics import Metrics, serve_metrics

        s = self.settings
        assert s.metrics is not None
        host, port = split_hostport(s.metrics)
        token = s.metrics_token.get_secret_value() if s.metrics_token else None
        if not is_loopback(host) and not token:
            raise ConfigurationError(
                f"refusing to serve metrics on {host} without a token: set "
                "VOICEOS_METRICS_TOKEN (scrapers send it as a bearer token), or listen on "
                "127.0.0.1"
            )
        if self.metrics is None:
            self.metrics = Metrics()
            self.agent.subscribers.append(self.metrics.observe)
        metrics = self.metrics

        def sample() -> None:
            dropped = sum(
                sub.dropped for call in self.agent.calls.values() for sub in call.bus.subscriptions
            )
            metrics.sample(clock, self.agent.dropped_events + dropped, self.outbox_backlog)

        return await serve_metrics(metrics, host, port, token, sample)

    async def _serve_dashboard(self) -> Any:
        """The live dashboard of this bridge's calls at ``VOICEOS_DASHBOARD``."""
        from .dashboard import announce, phone_config, resolve_token, start_server
        from .dashboard.app import create_app
        from .dashboard.feed import LiveFeed

        s = self.settings
        assert s.dashboard is not None
        host, _ = split_hostport(s.dashboard)
        token, generated = resolve_token(s, host)
        feed = LiveFeed()
        app = create_app(
            lambda: self.agent.store,
            feed,
            token,
            variants=[v.name for v in self.agent.variants],
            secure_cookie=s.dashboard_secure_cookie,
            live=self.agent.live_calls,
            phone=phone_config(s),
        )
        server = await start_server(app, s.dashboard)
        server.feed = feed
        self.agent.subscribers.append(feed.publish)
        announce(host, server.port, token, generated)
        logger.info(log.kv(event="dashboard_serving", host=host, port=server.port))
        return server

    async def _start_freeswitch(self, recorder: Any, clock: Any) -> Any:
        """The mod_audio_stream WebSocket server, and ESL control if configured."""
        from .transports.audiostream import AudioStreamServer

        s = self.settings
        assert s.freeswitch_stream is not None
        host, port = split_hostport(s.freeswitch_stream)
        if not is_loopback(host) and not s.allow_remote_stream:
            raise ConfigurationError(
                f"refusing to listen on {host}: set VOICEOS_ALLOW_REMOTE_STREAM=true to accept "
                "FreeSWITCH streams from the network (they are token-authenticated)"
            )
        token = s.stream_token.get_secret_value() if s.stream_token else ""
        if len(token) < 16:
            raise ConfigurationError(
                "VOICEOS_STREAM_TOKEN must be set (16 characters or more) to accept FreeSWITCH "
                "streams; put the same token in the stream URL of the FreeSWITCH dialplan"
            )
        if s.esl_outbound:
            out_host, _ = split_hostport(s.esl_outbound)
            if not is_loopback(out_host):
                raise ConfigurationError(
                    f"refusing to listen on {out_host} for outbound event sockets (they carry "
                    "no authentication): keep VOICEOS_ESL_OUTBOUND on loopback"
                )
        if s.esl_password is not None or s.esl_outbound:
            password = s.esl_password.get_secret_value() if s.esl_password else None
            self.esl = ESLController(s.esl_host, s.esl_port, password)
            self.esl.start()
        elif s.stream_playback == "files":
            raise ConfigurationError(
                "stream_playback='files' plays agent audio over the Event Socket: set "
                "VOICEOS_ESL_PASSWORD or VOICEOS_ESL_OUTBOUND (or use a module that plays "
                "streamAudio itself: VOICEOS_STREAM_PLAYBACK=inject)"
            )
        stream = AudioStreamServer(
            self.agent.handle_call,
            token,
            clock=clock,
            control=self.esl,
            playback=s.stream_playback,
            chunk_ms=s.stream_chunk_ms,
            max_calls=s.max_calls,
            handshake_timeout=s.handshake_timeout_s,
            max_frame_bytes=s.max_frame_bytes,
            recorder=recorder,
            watchdog_s=s.freeswitch_watchdog_s,
        )
        await stream.start(host, port)
        if s.esl_outbound and self.esl is not None:
            await self.esl.serve_outbound(*split_hostport(s.esl_outbound), stream.url)
        return stream

    def _rate_hint(self, call_id: str) -> int | None:
        info = self.control.channels.get(call_id) if self.control is not None else None
        return info.rate if info is not None else None

    async def _store_unsaved(self) -> None:
        """A record the store refused (the database was down) is kept as a
        file in ``state_dir/records-unsaved``; it goes into the store, once,
        when the store takes it again, and its analyses are queued then."""
        from .jobs.kinds import ANALYZE

        folder = self.settings.state_dir / "records-unsaved"
        kinds = (ANALYZE,) if self.settings.redis_url else ()
        waiting = False
        while True:
            await asyncio.sleep(UNSAVED_RETRY_S)
            paths = await asyncio.to_thread(
                lambda: sorted(folder.glob("*.json")) if folder.is_dir() else []
            )
            for path in paths:
                try:
                    record = json.loads(await asyncio.to_thread(path.read_text))
                except (OSError, ValueError) as exc:
                    bad = path.with_suffix(".unreadable")
                    await asyncio.to_thread(path.rename, bad)
                    logger.error(log.kv(event="record_unreadable", path=str(bad), error=str(exc)))
                    continue
                try:
                    await asyncio.to_thread(self.agent.store.save_call, record, kinds)
                except Exception as exc:  # noqa: BLE001 - any store fault: try again later
                    if not waiting:
                        logger.warning(
                            log.kv(
                                event="records_waiting_for_store",
                                waiting=len(paths),
                                folder=str(folder),
                                error=str(exc).splitlines()[0] if str(exc) else repr(exc),
                            )
                        )
                        waiting = True
                    break
                await asyncio.to_thread(path.unlink)
                waiting = False
                logger.info(log.kv(event="record_stored_late", call_id=record.get("id")))
                self.record_written()

    async def _run_outbox(self) -> None:
        """Hand stored analysis jobs to the queue; keep them while it is down."""
        from .jobs.outbox import Outbox

        assert self._outbox_wakeup is not None
        outbox = Outbox(self.agent.store, self.settings)
        while True:
            await outbox.flush()
            self.outbox_backlog = await asyncio.to_thread(self.agent.store.pending_count)
            try:
                await asyncio.wait_for(self._outbox_wakeup.wait(), outbox.retry_s)
            except TimeoutError:
                pass
            self._outbox_wakeup.clear()


def serve(agent: Any) -> None:
    """Run ``agent`` in the foreground: SIGTERM drains it (no new call, the
    ones in progress finish, then it exits); Ctrl-C, or a second SIGTERM,
    stops it at once."""
    log.setup(agent.settings.log_level)

    async def main() -> None:
        stop, drain = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()

        def terminate() -> None:
            # the first SIGTERM drains (a rolling restart); a second stops now
            if drain.is_set():
                stop.set()
            drain.set()

        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, terminate)
        await agent.run(stop=stop, drain=drain)

    asyncio.run(main())

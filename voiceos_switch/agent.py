"""The public SDK: an :class:`Agent` answers calls; handlers react to events.

::

    from voiceos_switch import Agent

    agent = Agent(system_prompt="...")

    @agent.on("dtmf")
    async def pressed(call, digit):
        await call.say(f"You pressed {digit}")

    agent.serve()
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import events as ev
from . import log
from .call import TTS, Call
from .control.ami import AMIController, AMIError, AMIPool
from .control.esl import ESLController, ESLError
from .errors import CallControlError, ConfigurationError, TransferError
from .handlers import Handler, handler_subscriber
from .media import AudioIn, CallMedia, DtmfIn, MediaEnded
from .settings import Settings
from .variants import Variant
from .variants import check as check_variants
from .variants import pick as pick_variant

if TYPE_CHECKING:
    from .deploy import Deployment

logger = log.get(__name__)

EVENTS = frozenset(
    {
        "call_started",
        "call_ended",
        "dtmf",
        "transcript",
        "emotion_detected",
        "escalation_requested",
    }
)


DEFAULT_PROMPT = "You are a helpful phone agent."

#: how long a finished call waits for its handlers before it lets them go
HANDLER_DRAIN_S = 10.0
#: what the agent says as it hands a caller to a person (rendered in advance)
CONNECTING = "Connecting you to a person."


class Agent:
    """A voice agent. Until a ``model`` is configured it is the built-in
    greeting agent: it speaks ``greeting``, reads back keypad digits, hands
    the caller to a human on 0 and says goodbye on #.
    """

    def __init__(
        self,
        model: str | None = None,
        voice: str | None = None,
        system_prompt: str | None = None,
        tools: Sequence[Callable[..., Any]] = (),
        emotion_triggers: Mapping[str, Any] | None = None,
        *,
        greeting: str | None = None,
        human_target: str | None = None,
        style: str = "balanced",
        stt: str | None = None,
        facts: Sequence[str] | Mapping[str, str] | None = None,
        turn_detection: bool = True,
        read_emotion: bool | None = None,
        variants: Sequence[Variant] = (),
        reprompt_after_s: float = 8.0,
        name: str = "agent",
        settings: Settings | None = None,
    ) -> None:
        from .conversation.endpoint import STYLES
        from .providers import registry

        self.name = name
        self.settings = settings or Settings()
        if stt is not None:
            self.settings = self.settings.model_copy(update={"stt": stt})
        registry.check_stt_name(self.settings.stt)
        if model is not None and self.settings.llm:
            model = self.settings.llm
        self.model = model
        if model is not None:
            registry.check_llm_name(model)
        self.voice = voice or "espeak"
        registry.check_voice_name(self.voice)
        if style not in STYLES:
            raise ConfigurationError(f"style={style!r}: one of {', '.join(STYLES)}")
        self.style = style
        self.system_prompt = system_prompt
        self.tools = list(tools)
        from .conversation.emotion import parse_triggers

        try:
            #: what the agent does when the caller's emotion sets in
            self.emotion_triggers = parse_triggers(emotion_triggers)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        #: the caller's emotion is read on every call (``emotion_detected``);
        #: triggers need it read
        if read_emotion is None:
            read_emotion = self.settings.read_emotion
        self.read_emotion = read_emotion or bool(self.emotion_triggers)
        if greeting is None:
            greeting = (
                self.settings.greeting if model is None else "Hello! How can I help you today?"
            )
        self.greeting = greeting
        try:
            #: A/B variants of the prompt, one per call by share (``call.variant``)
            self.variants = check_variants(variants)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        for v in self.variants:
            if v.style is not None and v.style not in STYLES:
                raise ConfigurationError(
                    f"variant {v.name!r}: style={v.style!r}: one of {', '.join(STYLES)}"
                )
        self.human_target = human_target or self.settings.human_extension
        from .conversation.knowledge import Knowledge, facts_from

        try:
            self.knowledge = Knowledge(facts_from(facts))
        except ValueError as exc:
            raise ConfigurationError(f"facts: {exc}") from exc
        self.turn_detection = turn_detection
        #: a caller silent this long is asked "Are you still there?", then
        #: after as long again told goodbye, and the call is hung up
        self.reprompt_after_s = reprompt_after_s
        self._turn_model: Any = None
        self._text_turn: Any = None
        self._handlers: dict[str, list[Handler]] = {name: [] for name in EVENTS}
        self.calls: dict[str, Call] = {}
        #: what serves the calls, once ``run`` has started it
        self.runtime: Any = None
        self._tts: TTS | None = None
        self._llm: Any = None
        self._stt: Any = None
        #: the live calls' conversations
        self.conversations: dict[str, Any] = {}
        #: the last finished ones (metrics for benchmarks), bounded
        self.finished: collections.deque[Any] = collections.deque(maxlen=20)
        self._store: Any = None
        self._models_loaded = False
        self._loading: asyncio.Event | None = None
        from .conversation.speechcache import SpeechCache

        #: the audio of the agent's fixed lines, rendered once for every call
        self.speech_cache = SpeechCache()
        #: subscribers every call's event bus gets (the metrics, a live
        #: viewer): each ``fn(event)``, sync or async, off the turn loop
        self.subscribers: list[Callable[[ev.Event], Any]] = []
        #: events slow subscribers lost on calls that have ended
        self.dropped_events = 0

    # events ----------------------------------------------------------------
    def on(self, event: str) -> Callable[[Handler], Handler]:
        if event not in EVENTS:
            raise ConfigurationError(
                f"unknown event {event!r}; one of: {', '.join(sorted(EVENTS))}"
            )

        def register(fn: Handler) -> Handler:
            self._handlers[event].append(fn)
            return fn

        return register

    def has_handlers(self, event: str) -> bool:
        return bool(self._handlers[event])

    # call control ------------------------------------------------------------
    def _require_control(
        self, what: str, error: type[CallControlError] = CallControlError, call: Call | None = None
    ) -> Any:
        """The controller for this call's PBX: AMI for Asterisk, ESL for FreeSWITCH."""
        if call is not None and call.pbx == "freeswitch":
            if self.esl is None:
                raise error(f"cannot {what}: the bridge has no Event Socket connection")
            return self.esl
        if self.control is None:
            raise error(f"cannot {what}: the bridge has no AMI connection")
        return self.control

    def transfer_to_human(
        self,
        call: Call,
        target: str | None = None,
        include_transcript: bool = True,
        via: str = "redirect",
    ) -> asyncio.Task[None]:
        """Hand the caller to a human (``voiceos-humans``/``<target>`` in the dialplan).

        It starts at once and returns the hand-off's task: ``await`` it to
        know it was done (it raises :class:`TransferError` if not), or call
        it from a plain handler and let it run (a failure is logged).

        The transcript so far goes with the call when ``include_transcript``
        is true: as the channel variable ``VOICEOS_TRANSCRIPT`` on Asterisk,
        ``voiceos_transcript`` on FreeSWITCH (which also gets a
        ``voiceos::handoff`` event with the whole transcript as its body).
        ``via="redirect"`` moves the channel at once (AMI Redirect,
        ``uuid_transfer``); on Asterisk ``via="dialplan"`` sets
        ``VOICEOS_HANDOFF`` and ends the media session, so the
        ``voiceos-agent`` Gosub returns the target and the inbound context
        dials it.
        """
        if via not in ("redirect", "dialplan"):
            raise ValueError(f"via must be 'redirect' or 'dialplan', not {via!r}")
        task = asyncio.ensure_future(self._transfer(call, target, include_transcript, via))

        def done(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                logger.error(log.kv(event="transfer_failed", error=t.exception()))

        task.add_done_callback(done)
        return task

    async def _transfer(
        self, call: Call, target: str | None, include_transcript: bool, via: str
    ) -> None:
        target = target or self.human_target
        control = self._require_control(f"transfer to {target}", TransferError, call)
        call.stop_speaking()  # the agent does not talk over the hand-off
        # noted before the PBX moves the call: the media ends with the move,
        # and the call's record is written as soon as it does
        previous, call.transferred_to = call.transferred_to, target
        try:
            await call.media.finish_playing()  # the caller hears the last phrase whole
            if call.pbx == "freeswitch":
                await self._handoff_freeswitch(call, control, target, include_transcript)
            else:
                if include_transcript:
                    await control.set_var(call.id, "VOICEOS_TRANSCRIPT", call.transcript_text())
                await control.set_var(call.id, "VOICEOS_HANDOFF", target)
                if via == "redirect":
                    await control.redirect(call.id, target)
        except (AMIError, ESLError, TimeoutError) as exc:
            call.transferred_to = previous
            raise TransferError(f"transfer to {target} failed: {exc}") from exc
        logger.info(log.kv(event="transferred", target=target, via=via))
        call.publish(ev.Transferred(call.id, target))
        if via == "dialplan" and call.pbx != "freeswitch":
            await call.hangup()

    async def _handoff_freeswitch(
        self, call: Call, esl: ESLController, target: str, include_transcript: bool
    ) -> None:
        if include_transcript:
            text = call.transcript_text()
            await esl.set_var(call.id, "voiceos_transcript", text)
            await esl.send_event("voiceos::handoff", {"Voiceos-Target": target}, text, call.id)
        stop_watchdog = getattr(call.media, "stop_watchdog", None)
        if stop_watchdog is not None:
            await stop_watchdog()  # the call is the humans' now, not the fallback's
        # the agent's stream ends with the handoff; the human leg has no bridge
        await esl.api(f"uuid_audio_stream {call.id} stop")
        await esl.redirect(call.id, target)

    async def start_recording(self, call: Call, name: str | None = None) -> str:
        """Record the call on the PBX. Asterisk (MixMonitor): one WAV with
        both sides, plus the caller's and the agent's legs; FreeSWITCH
        (``uuid_record``): one WAV. Returns the file's path on the PBX."""
        control = self._require_control("record", call=call)
        stem = name or "voiceos-" + call.id
        if call.pbx == "freeswitch":
            path = f"{self.settings.freeswitch_recordings_dir.rstrip('/')}/{stem}.wav"
            options = ""
        else:
            base = f"/var/spool/asterisk/monitor/{stem}"
            path, options = f"{base}.wav", f"r({base}-caller.wav)t({base}-agent.wav)"
        try:
            await control.start_recording(call.id, path, options)
        except (AMIError, ESLError, TimeoutError) as exc:
            raise CallControlError(f"recording failed: {exc}") from exc
        call.recordings.append(path)
        logger.info(log.kv(event="recording_started", file=path))
        return path

    async def stop_recording(self, call: Call) -> None:
        control = self._require_control("stop recording", call=call)
        try:
            await control.stop_recording(call.id)
        except (AMIError, ESLError, TimeoutError) as exc:
            raise CallControlError(f"stopping the recording failed: {exc}") from exc

    async def hangup(self, call: Call) -> None:
        """Hang the caller up at the PBX (AMI Hangup, ``uuid_kill``), not just the media."""
        control = self._require_control("hang up", call=call)
        try:
            await control.hangup(call.id)
        except (AMIError, ESLError, TimeoutError) as exc:
            raise CallControlError(f"hangup failed: {exc}") from exc

    # the per-call loop -----------------------------------------------------
    def _tts_provider(self) -> TTS:
        if self._tts is None:
            from .providers import registry

            self._tts = registry.make_tts(self.voice, self.settings)
        return self._tts

    async def load_models(self) -> None:
        """Load every model now, not on the first caller's time (once), and
        evaluate the agent's system prompt and greeting in the model's
        contexts, so a call's first turn pays only for what the caller said."""
        if self._models_loaded:
            return
        if self._loading is not None:
            await self._loading.wait()
            return
        loading = self._loading = asyncio.Event()
        try:
            await self._load_models()
        finally:
            loading.set()
            self._loading = None

    async def _load_models(self) -> None:
        from .providers import registry

        async for _ in self._tts_provider().stream("ready", 8000):
            pass
        if self.model is not None:
            if self._llm is None:
                self._llm = registry.make_llm(self.model, self.settings)
            if self._stt is None:
                self._stt = registry.make_stt(self.settings)
            if self._turn_model is None and self.turn_detection:
                self._turn_model = registry.make_turn_model()
                self._text_turn = registry.make_text_turn_model()
            await registry.warm_up(
                self._llm, self._stt, bool(self.tools), self._turn_model, self._text_turn
            )
            await self.knowledge.load()
            await self._render_fixed_lines()
            warm = getattr(self._llm, "warm", None)
            if warm is not None:
                chosen: list[Variant | None] = [*self.variants] or [None]
                for prompt, greeting in dict.fromkeys(
                    (self._prompt_of(v), self._greeting_of(v)) for v in chosen
                ):
                    await warm(self._prompt_prefix(prompt, greeting))
        self._models_loaded = True

    async def _render_fixed_lines(self) -> None:
        """The facts, the greeting and the engine's own lines, in the agent's
        voice at the telephone rate, before the first call needs them."""
        from .conversation.engine import NOT_SURE, TROUBLE, ConversationConfig

        cfg = ConversationConfig()
        lines = [f.answer for f in self.knowledge.facts]
        lines += [self._greeting_of(v) for v in self.variants if v.greeting]
        lines += [self.greeting or "", cfg.reprompt_text, cfg.goodbye_text, cfg.not_heard_text]
        lines += [NOT_SURE, TROUBLE, CONNECTING]
        lines += [t.say for t in self.emotion_triggers.values() if isinstance(t.say, str)]
        started = time.monotonic()
        rendered = await self.speech_cache.render(
            self._tts_provider(), [line for line in lines if line], 8000
        )
        logger.info(
            log.kv(
                event="fixed_lines_rendered",
                clauses=rendered,
                ms=round((time.monotonic() - started) * 1000),
            )
        )

    def _prompt_of(self, variant: Variant | None) -> str:
        if variant is not None and variant.system_prompt is not None:
            return variant.system_prompt
        return self.system_prompt or DEFAULT_PROMPT

    def _greeting_of(self, variant: Variant | None) -> str:
        if variant is not None and variant.greeting is not None:
            return variant.greeting
        return self.greeting or ""

    def _prompt_prefix(self, prompt: str, greeting: str) -> list[dict[str, Any]]:
        from .conversation.engine import system_message

        small = bool(getattr(self._llm, "small", False))
        prefix = [system_message(prompt, small)]
        if greeting:
            prefix.append({"role": "assistant", "content": greeting})
        return prefix

    async def handle_call(self, media: CallMedia) -> None:
        """Run one call from its first frame to its end."""
        if not self._models_loaded:
            logger.info(log.kv(event="call_waiting_for_models"), extra={"call_id": media.call_id})
            await self.load_models()
        bus = ev.EventBus(media.call_id)
        call = Call(media, self._tts_provider(), agent_name=self.name, bus=bus)
        ev.bind_call(call.id, call.publish)  # what shared providers report is this call's
        variant = pick_variant(call.id, self.variants)
        call.variant = variant.name if variant is not None else None
        bus.subscribe(handler_subscriber(self._handlers, call), "handlers")
        for subscriber in self.subscribers:
            bus.subscribe(subscriber, getattr(subscriber, "__name__", "subscriber"))
        self.calls[call.id] = call
        if self.control is not None and call.pbx == "asterisk":
            info = self.control.channels.get(call.id)
            if info is not None:
                call.caller, call.called = info.caller, info.called
                call.pbx_address = info.pbx_address
        call.caller = call.caller or getattr(media, "caller", "")
        call.called = call.called or getattr(media, "called", "")
        logger.info(log.kv(event="call_started", pbx=call.pbx, rate=call.sample_rate))
        conversation: Any = None
        try:
            if self.model is not None:
                conversation = await self._converse(call, media, variant)
            else:
                await self._keypad(call, media)
        finally:
            call.ended_at = time.time()
            reason = getattr(media, "end_reason", None)
            call.end_reason = getattr(reason, "reason", "ended")
            call.publish(ev.AudioEnded(call.id, call.end_reason))
            logger.info(
                log.kv(
                    event="call_ended",
                    reason=call.end_reason,
                    turns=len(call.transcript),
                    dtmf="".join(call.dtmf) or "-",
                    barge_ins=getattr(conversation, "barge_ins", 0),
                )
            )
            await self._write_record(call, conversation)
            call.publish(
                ev.CallEnded(
                    call.id, call.end_reason, call.ended_at - call.started_at, call.transferred_to
                )
            )
            if not await bus.drain(HANDLER_DRAIN_S):
                logger.warning(log.kv(event="handlers_still_running", after_s=HANDLER_DRAIN_S))
            self.dropped_events += sum(sub.dropped for sub in bus.subscriptions)
            await bus.close()
            self.calls.pop(call.id, None)
            live = self.conversations.pop(call.id, None)
            if live is not None:
                self.finished.append(live)

    async def _keypad(self, call: Call, media: CallMedia) -> None:
        """The built-in greeting agent: the keypad drives it."""
        speaking: asyncio.Task[Any] | None = None
        try:
            self._started(call)
            if not self.has_handlers("call_started") and self.greeting:
                speaking = asyncio.create_task(call.say(self.greeting))
            async for event in media.events():
                if isinstance(event, AudioIn):
                    continue
                if isinstance(event, DtmfIn):
                    call.dtmf.append(event.digit)
                    call.publish(ev.Dtmf(call.id, event.digit))
                    if not self.has_handlers("dtmf"):
                        speaking = await self._builtin_dtmf(call, event.digit, speaking)
                elif isinstance(event, MediaEnded):
                    break
        finally:
            if speaking is not None and not speaking.done():
                speaking.cancel()
                await asyncio.gather(speaking, return_exceptions=True)

    def _started(self, call: Call) -> None:
        call.publish(
            ev.CallStarted(
                call.id, call.pbx, call.caller, call.called, call.sample_rate, call.variant
            )
        )

    async def _converse(self, call: Call, media: CallMedia, variant: Variant | None) -> Any:
        from .conversation.engine import Conversation, ConversationConfig
        from .tools import Tool

        await self.load_models()
        conversation = Conversation(
            call,
            media,
            stt=self._stt,
            llm=self._llm,
            tts=self._tts_provider(),
            tools=[Tool.from_function(f) for f in self.tools],
            config=ConversationConfig(
                system_prompt=self._prompt_of(variant),
                greeting=self._greeting_of(variant) or None,
                style=(variant.style if variant and variant.style else self.style),
                reprompt_after_s=self.reprompt_after_s,
            ),
            turn_model=self._turn_model,
            text_turn=self._text_turn,
            knowledge=self.knowledge,
            speech_cache=self.speech_cache,
            emotion=self._emotion_reader(media),
            triggers=self.emotion_triggers,
        )
        self.conversations[call.id] = conversation
        call.bus.subscribe(self._builtin_behaviour(call), "builtin")
        self._started(call)
        await conversation.run()
        return conversation

    def _emotion_reader(self, media: CallMedia) -> Any:
        if not self.read_emotion:
            return None
        from .conversation.emotion import thresholds
        from .providers.emotion import EmotionReader

        return EmotionReader(media.sample_rate, thresholds=thresholds(self.emotion_triggers))

    # call records --------------------------------------------------------------
    @property
    def store(self) -> Any:
        """The durable call store (created and migrated on first use)."""
        if self._store is None:
            from .records.store import Store

            store = Store(self.settings.resolved_database_url)
            store.migrate()
            self._store = store
        return self._store

    async def _write_record(self, call: Call, conversation: Any) -> None:
        """The call's record goes to disk before anything else sees the end of
        the call. If the store cannot take it, the record is written as a JSON
        file next to it, so it is never lost."""
        from .jobs.kinds import ANALYZE
        from .records.record import build_record

        record = build_record(call, conversation, self.settings)
        kinds = (ANALYZE,) if self.settings.redis_url else ()
        try:
            await asyncio.to_thread(self.store.save_call, record, kinds)
            logger.info(log.kv(event="record_written", cost=record["cost"]["total"]))
        except Exception as exc:  # noqa: BLE001 - a record must survive any store fault
            path = self.settings.state_dir / "records-unsaved" / f"{call.id}.json"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record))
                where = str(path)
            except OSError as io_exc:
                where = f"nowhere ({io_exc}); record follows: {json.dumps(record)}"
            logger.error(log.kv(event="record_store_failed", error=repr(exc), saved_to=where))
            return
        if self.runtime is not None:
            self.runtime.record_written()

    async def _builtin_dtmf(
        self, call: Call, digit: str, speaking: asyncio.Task[Any] | None
    ) -> asyncio.Task[Any] | None:
        """The greeting agent's keypad menu; a new key interrupts speech."""
        if speaking is not None and not speaking.done():
            speaking.cancel()
            await asyncio.gather(speaking, return_exceptions=True)
        if digit == "0":
            call.publish(ev.EscalationRequested(call.id, "keypad"))
            if not self.has_handlers("escalation_requested"):
                return asyncio.create_task(self._say_then_transfer(call))
            return None
        if digit == "#":
            return asyncio.create_task(self._say_then_hangup(call, "Goodbye."))
        name = {"*": "star"}.get(digit, digit)
        return asyncio.create_task(call.say(f"You pressed {name}."))

    def _builtin_behaviour(self, call: Call) -> Callable[[ev.Event], Any]:
        """A subscriber: a caller asking for a person is handed over by the
        agent itself unless a handler for ``escalation_requested`` decides
        instead."""
        handing_over: set[asyncio.Task[Any]] = set()

        def on(event: ev.Event) -> None:
            if isinstance(event, ev.EscalationRequested) and not self.has_handlers(
                "escalation_requested"
            ):
                task = asyncio.ensure_future(self._say_then_transfer(call))
                handing_over.add(task)
                task.add_done_callback(handing_over.discard)

        return on

    async def _say_then_transfer(self, call: Call, include_transcript: bool = True) -> None:
        await call.say(CONNECTING)
        try:
            await self.transfer_to_human(call, include_transcript=include_transcript)
        except TransferError:  # logged by the hand-off itself
            await call.say("Sorry, nobody can take your call right now.")

    async def _say_then_hangup(self, call: Call, text: str) -> None:
        await call.say(text)
        await call.hangup()

    # serving ---------------------------------------------------------------
    async def run(
        self,
        ready: asyncio.Event | None = None,
        stop: asyncio.Event | None = None,
        control: bool = True,
        drain: asyncio.Event | None = None,
    ) -> None:
        """Serve calls until ``stop`` is set (or forever). ``control=False``
        runs without AMI (no transfers or PBX-side recording). ``drain``:
        when set, take no new call and stop once the calls in progress have
        ended (``drain_timeout_s`` at most). The runtime (``self.runtime``)
        owns the frame clock, the transports and servers."""
        from .runtime import Runtime

        self.runtime = Runtime(self)
        await self.runtime.run(ready=ready, stop=stop, control=control, drain=drain)

    def deploy(
        self,
        phone_number: str,
        max_concurrent_calls: int | None = None,
        regions: list[str] | None = None,
        routes_dir: str | Path | None = None,
        serve: bool = True,
    ) -> Deployment:
        """Take calls to ``phone_number`` here: render the PBX routing for it
        (installed in the managed Asterisk, or written to ``routes_dir`` for
        a PBX of your own), refuse calls over ``max_concurrent_calls`` at
        once (the PBX then tries the next bridge), and serve (``serve=False``:
        only prepare). ``regions``: the cells that serve the number; this
        one's is VOICEOS_REGION (docs/scaling.md)."""
        from .deploy import install, plan

        limit = max_concurrent_calls or self.settings.max_calls
        deployment = plan(self.settings, self.name, phone_number, limit, regions)
        self.settings = self.settings.model_copy(update={"max_calls": limit})
        install(deployment, self.settings, Path(routes_dir) if routes_dir else None)
        logger.info(
            log.kv(
                event="deployed",
                number=deployment.phone_number,
                max_calls=limit,
                region=deployment.region or "-",
                routes=",".join(str(p) for p in deployment.written),
            )
        )
        if serve:
            self.serve()
        return deployment

    # what the runtime serves, read through it (None before it runs) ---------------
    @property
    def control(self) -> AMIController | AMIPool | None:
        return self.runtime.control if self.runtime is not None else None

    @property
    def esl(self) -> ESLController | None:
        return self.runtime.esl if self.runtime is not None else None

    @property
    def server(self) -> Any:
        return self.runtime.server if self.runtime is not None else None

    @property
    def stream_server(self) -> Any:
        return self.runtime.stream_server if self.runtime is not None else None

    @property
    def metrics_server(self) -> Any:
        return self.runtime.metrics_server if self.runtime is not None else None

    @property
    def metrics(self) -> Any:
        return self.runtime.metrics if self.runtime is not None else None

    @property
    def dashboard(self) -> Any:
        return self.runtime.dashboard if self.runtime is not None else None

    @property
    def event_stream(self) -> Any:
        return self.runtime.event_stream if self.runtime is not None else None

    def live_calls(self) -> list[dict[str, Any]]:
        """The calls in progress, as the dashboard lists them."""
        return [
            {
                "id": c.id,
                "pbx": c.pbx,
                "agent": c.agent_name,
                "variant": c.variant,
                "caller": c.caller,
                "called": c.called,
                "started_at": c.started_at,
                "turns": [{"role": t.role, "text": t.text} for t in c.transcript if t.text],
            }
            for c in list(self.calls.values())
        ]

    def serve(self) -> None:
        """Run the bridge in the foreground: SIGTERM drains it, Ctrl-C stops it."""
        from .runtime import serve

        serve(self)

"""The turn loop: listen, think, speak, be interrupted.

Inbound audio -> VAD -> endpointer (with the transcript) -> STT final ->
LLM (streaming, tools) -> chunker -> TTS -> pacer. Barge-in is a separate,
prioritised path: caller speech over the agent pauses the agent's audio at
once; if the caller's words are more than a backchannel, the reply is
cancelled and its queued audio dropped, and the agent's message is trimmed to
what was played. Every wait has a timeout, so no state can stick.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import log
from ..audio.pacer import Playout
from ..call import TTS, Call, Turn, heard_prefix
from ..media import AudioIn, CallMedia, DtmfIn, MediaEnded, MediaEvent
from ..providers.llm import LLM, LLMError, TextDelta, ToolCallRequest
from ..providers.stt import Transcript
from ..providers.vad import WINDOW_MS, VADStream
from .chunker import SentenceChunker
from .endpoint import EndpointConfig, Endpointer, looks_complete
from .tools import Tool

logger = log.get(__name__)

BACKCHANNELS = frozenset(
    "uh-huh uh huh mm-hmm mhm mm hmm okay ok yeah yes yep right sure alright got it i see "
    "oh ah aha cool great".split()
)

VOICE_RULES = (
    "You are speaking on a phone call. Answer in one to three short sentences of plain "
    "spoken English. No lists, markup, emoji or URLs. Say numbers, dates and times the "
    "way a person would say them aloud. If you need facts you do not have, use a tool."
)


BRIEF_VOICE_RULES = "Reply in one or two short spoken sentences."


class STTLike(Protocol):
    name: str

    async def transcribe(self, pcm: bytes, sample_rate: int, final: bool = True) -> Transcript: ...


@dataclass
class ConversationConfig:
    system_prompt: str = "You are a helpful phone agent."
    greeting: str | None = None
    style: str = "balanced"
    barge_in: bool = True
    #: caller speech over the agent for this long after its first VAD window
    #: (counted in audio) pauses the agent's audio
    barge_in_pause_ms: int = 32
    backchannels: frozenset[str] = BACKCHANNELS
    reprompt_after_s: float = 8.0
    reprompts: int = 1
    reprompt_text: str = "Are you still there?"
    goodbye_text: str = "I'll let you go now. Goodbye."
    max_utterance_s: float = 30.0
    tool_filler_after_s: float = 0.8
    tool_filler_text: str = "One moment while I check that."
    tool_timeout_s: float = 10.0
    llm_timeout_s: float = 8.0
    partial_interval_s: float = 0.8
    #: start the model on the speculative transcript before the endpoint.
    #: Off by default: with a tool answer through Asterisk the held reply was
    #: not heard (under investigation); see docs/conversation.md
    preemptive: bool = False
    max_tool_rounds: int = 3


@dataclass
class TurnMetrics:
    """Latency marks of one agent turn, as clock times (seconds)."""

    index: int
    caller_text: str = ""
    speech_end: float | None = None
    endpoint: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    first_frame_sent: float | None = None
    interrupted: bool = False
    preemptive: bool = False
    tool_calls: list[str] = field(default_factory=list)

    def as_ms(self) -> dict[str, float | None]:
        base = self.speech_end
        marks = {
            "endpoint": self.endpoint,
            "stt_final": self.stt_final,
            "llm_first_token": self.llm_first_token,
            "tts_first_audio": self.tts_first_audio,
            "first_frame_sent": self.first_frame_sent,
        }
        return {
            k: (round((v - base) * 1000, 1) if v is not None and base is not None else None)
            for k, v in marks.items()
        }

    @property
    def response_ms(self) -> float | None:
        return self.as_ms()["first_frame_sent"]


class _Utterance:
    """Caller audio of the turn in progress, bounded."""

    def __init__(self, rate: int, max_s: float, preroll_ms: int = 300) -> None:
        self.rate = rate
        self.max_bytes = int(max_s * rate) * 2
        self.preroll_bytes = rate * preroll_ms // 1000 * 2
        self.buf = bytearray()
        self.active = False

    def add(self, pcm: bytes) -> None:
        self.buf += pcm
        if not self.active and len(self.buf) > self.preroll_bytes:
            del self.buf[: len(self.buf) - self.preroll_bytes]

    @property
    def full(self) -> bool:
        return len(self.buf) >= self.max_bytes

    def take(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        self.active = False
        return data


class Conversation:
    """One call's conversation. ``await Conversation(...).run()`` until hangup."""

    def __init__(
        self,
        call: Call,
        media: CallMedia,
        *,
        stt: STTLike,
        llm: LLM,
        tts: TTS,
        tools: list[Tool],
        config: ConversationConfig,
        emit: Callable[..., Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call = call
        self.media = media
        self.stt, self.llm, self.tts = stt, llm, tts
        self.tools = {t.name: t for t in tools}
        self.config = config
        self.emit = emit
        self.now = clock
        self.rate = media.sample_rate
        self.vad = VADStream(self.rate)
        self.endpointer = Endpointer(EndpointConfig.style(config.style))
        self.utterance = _Utterance(self.rate, config.max_utterance_s)
        self.history: list[dict[str, Any]] = []
        self.metrics: list[TurnMetrics] = []
        self._reply: asyncio.Task[None] | None = None
        self._reply_speaking = False
        self._speculative: asyncio.Task[Transcript] | None = None
        self._partial: asyncio.Task[None] | None = None
        self._preempt: tuple[str, asyncio.Task[None], asyncio.Queue[Any]] | None = None
        self._last_partial_at = 0.0
        self._barge_onset: float | None = None
        self._barge_paused = False
        self._last_activity = self.now()
        self._last_audio_at = self.now()
        self._reprompts_done = 0
        self.false_barge_ins = 0
        self.barge_ins = 0
        self._ended = False

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        queue: asyncio.Queue[MediaEvent] = asyncio.Queue()

        async def pump() -> None:
            async for ev in self.media.events():
                queue.put_nowait(ev)

        reader = asyncio.create_task(pump())
        try:
            if self.config.greeting:
                self._start_reply(self._speak_text(self.config.greeting, None))
            while not self._ended:
                try:
                    event = await asyncio.wait_for(queue.get(), 0.02)
                except TimeoutError:
                    event = None
                if isinstance(event, MediaEnded):
                    break
                if isinstance(event, AudioIn):
                    self._on_audio(event.pcm)
                elif isinstance(event, DtmfIn):
                    self.call.dtmf.append(event.digit)
                    await self.emit("dtmf", self.call, event.digit)
                await self._on_time()
        finally:
            self._ended = True
            reader.cancel()
            self._cancel_preemption()
            for task in (self._reply, self._speculative, self._partial):
                if task is not None and not task.done():
                    task.cancel()
            await asyncio.gather(
                reader,
                *(t for t in (self._reply, self._speculative, self._partial) if t),
                return_exceptions=True,
            )

    # ----------------------------------------------------------- listening
    def _on_audio(self, pcm: bytes) -> None:
        now = self.now()
        self._last_audio_at = now
        self.utterance.add(pcm)
        for result in self.vad.feed(pcm):
            if result.speech and not self.endpointer.in_speech:
                self._cancel_speculation()  # the caller went on: decode again later
            started = self.endpointer.on_vad(result.speech, now * 1000, WINDOW_MS)
            if result.speech:
                self._last_activity = now
            if started:
                self.utterance.active = True
                self._cancel_speculation()
                if self._agent_audible():
                    self._barge_onset = now
            if result.speech and self._barge_onset is not None and not self._barge_paused:
                # measured in audio, not in wall time: frames that arrive in a
                # burst after a stall are still that much speech
                if self.endpointer.speech_ms - WINDOW_MS >= self.config.barge_in_pause_ms:
                    self._pause_for_barge_in()
        if self.endpointer.in_speech and self.utterance.active:
            self._maybe_partial(now)

    def _agent_audible(self) -> bool:
        return self.config.barge_in and self._reply is not None and not self._reply.done()

    async def _on_time(self) -> None:
        now = self.now()
        ep = self.endpointer
        if ep.in_speech and now - self._last_audio_at > 3 * WINDOW_MS / 1000:
            # the PBX stopped sending frames (DTX, silence suppression): that
            # is silence, measured from the last frame
            ep.on_vad(False, now * 1000, WINDOW_MS)
        if self.utterance.active and self.utterance.full:
            logger.info(log.kv(event="utterance_cap", seconds=self.config.max_utterance_s))
            await self._end_of_turn(now)
            return
        if self._barge_paused:
            await self._resolve_barge_in(now)
        if ep.has_turn and not ep.in_speech:
            if self._speculative is None and ep.silence_ms(now * 1000) >= WINDOW_MS:
                self._speculate()
            if ep.turn_over(now * 1000):
                if self._speculative is not None and not self._speculative.done():
                    if ep.silence_ms(now * 1000) < ep.config.incomplete_ms:
                        return  # wait for the words a little longer
                await self._end_of_turn(now)
                return
        if not ep.has_turn and ep.last_speech_ms is not None and not ep.in_speech:
            if ep.silence_ms(now * 1000) > ep.config.incomplete_ms:
                ep.reset()  # a click or a cough: no turn
                self.utterance.take()
                self._no_turn()  # if it had paused the agent, the agent goes on
        await self._maybe_reprompt(now)

    def _maybe_partial(self, now: float) -> None:
        if self._partial is not None and not self._partial.done():
            return
        if now - self._last_partial_at < self.config.partial_interval_s:
            return
        self._last_partial_at = now
        audio = bytes(self.utterance.buf)

        async def partial() -> None:
            result = await self.stt.transcribe(audio, self.rate, final=False)
            if self._speculative is None:  # a final decode outranks a partial one
                self.endpointer.set_text(result.text)

        self._partial = asyncio.create_task(partial())

    def _speculate(self) -> None:
        """Silence began: decode now, in parallel with the endpoint wait."""
        audio = bytes(self.utterance.buf)
        self._speculative = asyncio.create_task(self.stt.transcribe(audio, self.rate))
        self._speculative.add_done_callback(self._speculated)

    def _speculated(self, task: asyncio.Task[Transcript]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        text = task.result().text.strip()
        self.endpointer.set_text(text)
        if (
            self.config.preemptive
            and _has_words(text)
            and looks_complete(text)
            and (self._reply is None or self._reply.done())
            and self._barge_onset is None
            and not self._barge_paused
        ):
            self._start_preemption(text)

    def _start_preemption(self, text: str) -> None:
        """Start the model on the speculative transcript before the endpoint is
        final; its output is held until the turn is confirmed with the same
        words, and dropped if the caller goes on. Tools never run early."""
        messages = [*self._messages(), {"role": "user", "content": text}]
        tools = list(self.tools.values())
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def generate() -> None:
            try:
                async for event in self.llm.stream(messages, tools):
                    queue.put_nowait((self.now(), event))
            except Exception as exc:
                queue.put_nowait(exc)
            finally:
                queue.put_nowait(None)

        self._preempt = (text, asyncio.create_task(generate()), queue)

    def _cancel_preemption(self) -> None:
        if self._preempt is not None:
            self._preempt[1].cancel()
        self._preempt = None

    def _cancel_speculation(self) -> None:
        if self._speculative is not None and not self._speculative.done():
            self._speculative.cancel()
        self._speculative = None
        self._cancel_preemption()

    async def _end_of_turn(self, now: float) -> None:
        ep = self.endpointer
        speech_end = (ep.last_speech_ms or now * 1000) / 1000
        spec = self._speculative
        audio = self.utterance.take()
        ep.reset()
        self._speculative = None
        metrics = TurnMetrics(index=len(self.metrics) + 1, speech_end=speech_end, endpoint=now)
        try:
            if spec is not None:  # still valid: speech resuming would have cancelled it
                transcript = await asyncio.wait_for(spec, 10)
            else:
                transcript = await asyncio.wait_for(self.stt.transcribe(audio, self.rate), 10)
        except Exception as exc:
            logger.warning(log.kv(event="stt_failed", error=repr(exc)))
            self._no_turn()
            return
        metrics.stt_final = self.now()
        self.call.usage.stt_seconds += transcript.audio_s
        text = transcript.text.strip()
        if not _has_words(text):
            logger.info(log.kv(event="no_words", audio_s=round(transcript.audio_s, 2)))
            self._no_turn()  # noise, a cough, DTX: no phantom turn
            return
        previous = self._reply
        if self._barge_paused or self._barge_onset is not None:
            # this turn interrupted the agent: decide now with its words
            if self._is_backchannel(text):
                self._resume_after_false_barge_in()
                return
            self._confirm_barge_in()
        elif previous is not None and not previous.done():
            self._cancel_reply("caller spoke again")
        if previous is not None and not previous.done():
            # let the cut reply record what was heard before the caller's
            # words go into the history, so the model sees them in order
            await asyncio.wait({previous}, timeout=1.0)
        metrics.caller_text = text
        self._last_activity = self.now()
        self._reprompts_done = 0
        preempted = None
        if self._preempt is not None and self._preempt[0] == text:
            preempted = self._preempt[1:]  # the same words: keep what the model wrote
            self._preempt = None
            metrics.preemptive = True
        self._cancel_preemption()
        turn = self.call.add_caller_text(text)
        self.history.append({"role": "user", "content": text})
        logger.info(log.kv(event="caller_turn", text=text, preemptive=metrics.preemptive))
        await self.emit("transcript", self.call, turn)
        self.metrics.append(metrics)
        if self.call.transferred_to is not None or self.media.ended:
            # a handler handed the caller to a person or hung up: say nothing more
            self._cancel_preemption()
            return
        self._start_reply(self._respond(metrics, preempted))

    def _no_turn(self) -> None:
        if self._barge_paused or self._barge_onset is not None:
            self._resume_after_false_barge_in()

    # ------------------------------------------------------------ barge-in
    def _pause_for_barge_in(self) -> None:
        self._barge_paused = True
        self.media.pause_output()
        logger.info(log.kv(event="barge_in_pause"))

    async def _resolve_barge_in(self, now: float) -> None:
        # the sound that paused the agent was too short to be a turn (a click,
        # a cough): carry on speaking
        if not self.endpointer.in_speech and not self.utterance.active:
            self._resume_after_false_barge_in()

    def _is_backchannel(self, text: str) -> bool:
        words = re.findall(r"[a-z'-]+", text.lower())
        return (
            bool(words)
            and len(words) <= 3
            and all(
                w in self.config.backchannels or w.replace("-", " ") in self.config.backchannels
                for w in words
            )
        )

    def _confirm_barge_in(self) -> None:
        self.barge_ins += 1
        self._barge_onset = None
        self._barge_paused = False
        self._cancel_reply("barge-in")

    def _resume_after_false_barge_in(self) -> None:
        self.false_barge_ins += 1
        self._barge_onset = None
        if self._barge_paused:
            self._barge_paused = False
            self.media.resume_output()
        logger.info(log.kv(event="barge_in_ignored"))

    def _cancel_reply(self, why: str) -> None:
        dropped = self.media.clear()
        self.media.resume_output()
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        logger.info(log.kv(event="agent_interrupted", why=why, frames_dropped=dropped))

    # ------------------------------------------------------------- replies
    def _start_reply(self, coro: Awaitable[None]) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception(log.kv(event="reply_failed"))
            finally:
                self._barge_onset = None
                if self._barge_paused:
                    self._barge_paused = False
                    self.media.resume_output()
                self._last_activity = self.now()

        self._reply = asyncio.create_task(guarded())

    def _messages(self) -> list[dict[str, Any]]:
        if getattr(self.llm, "brief_prompt", False):
            system = f"{self.config.system_prompt} {BRIEF_VOICE_RULES}"
        else:
            system = f"{VOICE_RULES}\n\n{self.config.system_prompt}"
        if self.call.context:
            facts = "\n".join(f"- {c}" for c in self.call.context)
            system += f"\n\nFacts for this call:\n{facts}"
        keep = 8 if getattr(self.llm, "brief_prompt", False) else 30
        return [{"role": "system", "content": system}, *_recent(self.history, keep)]

    async def _respond(self, metrics: TurnMetrics, preempted: Any = None) -> None:
        tools = list(self.tools.values())
        for _round in range(self.config.max_tool_rounds + 1):
            calls: list[ToolCallRequest] = []
            chunker = SentenceChunker()
            spoken: list[tuple[str, Playout]] = []
            turn = Turn("agent", "", time.time())
            self.call.transcript.append(turn)
            try:
                messages = self._messages()
                usage = self.call.usage
                usage.llm_tokens_in += sum(
                    usage.tokens(str(m.get("content") or "")) for m in messages
                )
                if preempted is not None and _round == 0:
                    stream = _drain(*preempted)  # generated while the endpoint waited
                else:
                    stream = _stamped(
                        self.llm.stream(
                            messages,
                            tools if _round < self.config.max_tool_rounds else [],
                        ),
                        self.now,
                    )
                async with _timeout_iter(stream, self.config.llm_timeout_s) as events:
                    async for at, event in events:
                        if metrics.llm_first_token is None:
                            metrics.llm_first_token = at
                        if isinstance(event, ToolCallRequest):
                            calls.append(event)
                        elif isinstance(event, TextDelta):
                            usage.llm_tokens_out += usage.tokens(event.text)
                            for chunk in chunker.feed(event.text):
                                spoken.append((chunk, await self._synth(chunk, metrics)))
                for chunk in chunker.flush():
                    spoken.append((chunk, await self._synth(chunk, metrics)))
                results = [await p.wait() for _, p in spoken]
            except asyncio.CancelledError:
                self._finish_agent_turn(turn, spoken, interrupted=True)
                metrics.interrupted = True
                raise
            except (LLMError, TimeoutError) as exc:
                logger.warning(log.kv(event="llm_failed", error=exc))
                self.call.transcript.remove(turn)
                await self._speak_text(
                    "Sorry, I'm having trouble right now. Could you say that again?", metrics
                )
                return
            self._finish_agent_turn(turn, spoken, interrupted=not all(results))
            if spoken:
                await self.emit("transcript", self.call, turn)
            if not calls:
                if not spoken:
                    self.call.transcript.remove(turn)
                return
            if not spoken:
                self.call.transcript.remove(turn)
            direct = await self._run_tools(calls, metrics)
            if direct:
                await self._speak_text(" ".join(direct), metrics)
                return

    async def _run_tools(self, calls: list[ToolCallRequest], metrics: TurnMetrics) -> list[str]:
        """Run the requested tools; returns what they asked to say directly
        (a result with a top-level "say" is spoken as the answer, with no
        second pass through the model)."""
        self.history.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in calls
                ],
            }
        )
        filler: Playout | None = None
        direct: list[str] = []
        for call in calls:
            metrics.tool_calls.append(call.name)
            tool = self.tools.get(call.name)
            if tool is None:
                result = f'{{"error": "no tool named {call.name}"}}'
            else:
                task = asyncio.create_task(tool.run(call.arguments))
                done, _ = await asyncio.wait({task}, timeout=self.config.tool_filler_after_s)
                if not done and filler is None:
                    filler = await self._synth(self.config.tool_filler_text, None)
                try:
                    result = await asyncio.wait_for(task, self.config.tool_timeout_s)
                except TimeoutError:
                    result = '{"error": "the lookup timed out"}'
            logger.info(log.kv(event="tool_called", tool=call.name, arguments=call.arguments))
            self.call.tool_calls.append(
                {
                    "name": call.name,
                    "arguments": call.arguments,
                    "result": result,
                    "at": time.time(),
                }
            )
            say = _say_field(result)
            if say:
                direct.append(say)
            self.history.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result}
            )
        if filler is not None:
            await filler.wait()
        return direct if len(direct) == len(calls) else []

    async def _synth(self, text: str, metrics: TurnMetrics | None) -> Playout:
        """Synthesise one chunk and queue it; returns its playout."""
        audio = bytearray()
        self.call.usage.tts_chars += len(text)
        async for pcm in self.tts.stream(text, self.rate):
            if metrics is not None and metrics.tts_first_audio is None:
                metrics.tts_first_audio = self.now()
            audio += pcm
        playout = self.media.send_audio(bytes(audio))
        if metrics is not None and metrics.first_frame_sent is None:

            def mark(at: float, m: TurnMetrics = metrics) -> None:
                if m.first_frame_sent is None:
                    m.first_frame_sent = at

            playout.on_start = mark
        return playout

    async def _speak_text(self, text: str, metrics: TurnMetrics | None) -> None:
        turn = Turn("agent", "", time.time())
        self.call.transcript.append(turn)
        spoken: list[tuple[str, Playout]] = []
        try:
            for chunk in SentenceChunker().feed(text + " ") or [text]:
                spoken.append((chunk, await self._synth(chunk, metrics)))
            results = [await p.wait() for _, p in spoken]
        except asyncio.CancelledError:
            self._finish_agent_turn(turn, spoken, interrupted=True)
            raise
        self._finish_agent_turn(turn, spoken, interrupted=not all(results))
        await self.emit("transcript", self.call, turn)

    def _finish_agent_turn(
        self, turn: Turn, spoken: list[tuple[str, Playout]], interrupted: bool
    ) -> None:
        planned = " ".join(t for t, _ in spoken)
        heard_parts = []
        for text, playout in spoken:
            if playout.frames and playout.sent >= playout.frames:
                heard_parts.append(text)
            else:
                heard_parts.append(heard_prefix(text, playout.sent / max(playout.frames, 1)))
                break
        heard = " ".join(p for p in heard_parts if p)
        turn.text = heard if interrupted else planned
        turn.planned_text = planned
        turn.interrupted = interrupted
        turn.ended_at = time.time()
        if turn.text:
            self.history.append({"role": "assistant", "content": turn.text})

    # ------------------------------------------------------------- silence
    async def _maybe_reprompt(self, now: float) -> None:
        if self._reply is not None and not self._reply.done():
            return
        if self.endpointer.last_speech_ms is not None or self.utterance.active:
            return
        if now - self._last_activity < self.config.reprompt_after_s:
            return
        self._last_activity = now
        if self._reprompts_done < self.config.reprompts:
            self._reprompts_done += 1
            self._start_reply(self._speak_text(self.config.reprompt_text, None))
        else:

            async def goodbye() -> None:
                await self._speak_text(self.config.goodbye_text, None)
                await self.media.hangup()

            self._start_reply(goodbye())


async def _stamped(stream: Any, now: Callable[[], float]) -> Any:
    async for event in stream:
        yield now(), event


async def _drain(task: asyncio.Task[None], queue: asyncio.Queue[Any]) -> Any:
    """The events a preemptive generation produced (and is producing)."""
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()


def _recent(history: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The last ``keep`` messages, never starting inside a tool exchange."""
    recent = history[-keep:]
    while recent and recent[0].get("role") in ("tool", "assistant"):
        recent = recent[1:]
    return recent


def _say_field(result: str) -> str | None:
    try:
        data = json.loads(result)
    except ValueError:
        return None
    say = data.get("say") if isinstance(data, dict) else None
    return say if isinstance(say, str) and say.strip() else None


def _has_words(text: str) -> bool:
    return bool(re.search(r"[A-Za-z0-9]", text))


@contextlib.asynccontextmanager
async def _timeout_iter(stream: Any, first_timeout: float) -> Any:
    """Iterate ``stream`` with a deadline on each next item."""

    async def gen() -> Any:
        it = stream.__aiter__()
        while True:
            try:
                item = await asyncio.wait_for(it.__anext__(), first_timeout)
            except StopAsyncIteration:
                return
            yield item

    g = gen()
    try:
        yield g
    finally:
        await g.aclose()
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

"""Providers by name, as the SDK and settings spell them."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from ..settings import Settings

LLM_NAMES = (
    "'local' (SmolLM2 on llama.cpp, offline) or 'openai:<model>' (any OpenAI-compatible server)"
)
VOICE_NAMES = (
    "'espeak', 'espeak:<voice>', 'piper' or 'openai:<voice>' (an OpenAI-compatible speech "
    "server), or several separated by commas"
)
STT_NAMES = (
    "'moonshine' (Moonshine base, offline), 'whisper' (faster-whisper, offline), "
    "'openai:<model>' (an OpenAI-compatible transcription server) or "
    "'vosk-server:ws://HOST:PORT', or several separated by commas"
)


def _error(message: str) -> Exception:
    return ConfigurationError(message)


def check_llm_name(name: str) -> None:
    """One model, or a fallback chain: ``"openai:gpt-4o-mini,local"``."""
    for part in name.split(","):
        part = part.strip()
        if part in ("local", "smollm2") or (part.startswith("openai:") and len(part) > 7):
            continue
        raise _error(f"model={name!r}: use {LLM_NAMES}, or several separated by commas")


def check_voice_name(name: str) -> None:
    for part in name.split(","):
        part = part.strip()
        if part in ("espeak", "piper") or part.startswith("espeak:"):
            continue
        if part.startswith("openai:") and len(part) > 7:
            continue
        raise _error(f"voice={name!r}: use {VOICE_NAMES}")


def check_stt_name(name: str) -> None:
    for part in name.split(","):
        part = part.strip()
        if part in ("whisper", "moonshine") or (part.startswith("openai:") and len(part) > 7):
            continue
        if part.startswith(("vosk-server:ws://", "vosk-server:wss://")):
            continue
        raise _error(f"stt={name!r}: use {STT_NAMES}")


def make_llm(name: str, settings: Settings) -> Any:
    """The named model(s), always behind a fallback chain (which also puts a
    deadline on every token, so a stalled provider cannot hang a call)."""
    from .fallback import FallbackLLM
    from .llm import LocalLLM, OpenAICompatLLM

    check_llm_name(name)
    providers: list[Any] = []
    for part in (p.strip() for p in name.split(",")):
        if part.startswith("openai:"):
            key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
            providers.append(OpenAICompatLLM(part[7:], base_url=settings.llm_base_url, api_key=key))
        else:
            providers.append(LocalLLM())
    return FallbackLLM(providers, token_timeout_s=settings.llm_token_timeout_s)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _one_tts(name: str, settings: Settings | None) -> Any:
    if name == "piper":
        from .tts.piper import PiperTTS

        return PiperTTS()
    if name.startswith("openai:"):
        from ..settings import Settings as _Settings
        from .remote import OpenAICompatTTS

        s = settings or _Settings()
        return OpenAICompatTTS(
            name[7:],
            model=s.tts_model,
            base_url=s.tts_base_url or s.llm_base_url,
            api_key=_secret(s.tts_api_key or s.llm_api_key),
        )
    from .tts.espeak import EspeakTTS

    return EspeakTTS(voice=name.partition(":")[2] or "en-us")


def make_tts(name: str, settings: Settings | None = None) -> Any:
    """One voice, or a chain that falls back when a voice fails before its
    first audio."""
    check_voice_name(name)
    parts = [p.strip() for p in name.split(",")]
    if len(parts) == 1:
        return _one_tts(parts[0], settings)
    from .fallback import FallbackTTS

    return FallbackTTS([_one_tts(p, settings) for p in parts])


def make_stt(settings: Settings) -> Any:
    """The configured recogniser(s), behind a fallback chain with a deadline."""
    from .fallback import FallbackSTT
    from .remote import OpenAICompatSTT, VoskServerSTT
    from .stt import WhisperSTT

    check_stt_name(settings.stt)
    providers: list[Any] = []
    for part in (p.strip() for p in settings.stt.split(",")):
        if part.startswith("openai:"):
            providers.append(
                OpenAICompatSTT(
                    part[7:],
                    base_url=settings.stt_base_url or settings.llm_base_url,
                    api_key=_secret(settings.stt_api_key or settings.llm_api_key),
                )
            )
        elif part.startswith("vosk-server:"):
            providers.append(VoskServerSTT(part[12:]))
        elif part == "moonshine":
            from .moonshine import MoonshineSTT

            providers.append(
                MoonshineSTT(cache_dir=settings.state_dir / "models", threads=settings.stt_threads)
            )
        else:
            providers.append(WhisperSTT(model_dir=settings.stt_model_dir))
    return FallbackSTT(providers, timeout_s=settings.stt_timeout_s)


def make_turn_model() -> Any:
    """The end-of-turn model (Smart Turn v3.2, from the pipecat-ai wheel)."""
    from .turn import SmartTurn

    return SmartTurn()


def make_text_turn_model() -> Any:
    """The end-of-turn probability of the caller's words (the embedded SmolLM2)."""
    from .eou import TranscriptTurn

    return TranscriptTurn()


async def warm_up(
    llm: Any, stt: Any, tools: bool, turn_model: Any = None, text_turn: Any = None
) -> None:
    import asyncio

    from .vad import VADStream

    for model in (turn_model, text_turn):
        if model is not None:
            await model.load()

    # the VAD's ONNX session loads and runs its first inference in ~0.3 s:
    # not on the event loop while the first caller's audio (and every other
    # call's pacing) waits
    def vad_warm() -> None:
        import webrtcvad  # noqa: F401 - its import takes pkg_resources along: 0.2 s

        for rate in (8000, 16000):  # the session, and its first (slow) inference
            VADStream(rate, gate=False).feed(bytes(rate // 10 * 2))

    await asyncio.to_thread(vad_warm)
    load = getattr(stt, "load", None)
    if load is not None:
        await load()
    load_llm = getattr(llm, "load", None)
    if load_llm is not None:
        await load_llm(tools=tools)

"""Providers by name, as the SDK and settings spell them."""

from __future__ import annotations

from typing import Any

from ..settings import Settings

LLM_NAMES = (
    "'local' (SmolLM2 on llama.cpp, offline) or 'openai:<model>' (any OpenAI-compatible server)"
)
VOICE_NAMES = "'espeak', 'espeak:<voice>' or 'piper'"


def _error(message: str) -> Exception:
    from ..agent import ConfigurationError

    return ConfigurationError(message)


def check_llm_name(name: str) -> None:
    """One model, or a fallback chain: ``"openai:gpt-4o-mini,local"``."""
    for part in name.split(","):
        part = part.strip()
        if part in ("local", "smollm2") or (part.startswith("openai:") and len(part) > 7):
            continue
        raise _error(f"model={name!r}: use {LLM_NAMES}, or several separated by commas")


def check_voice_name(name: str) -> None:
    if name in ("espeak", "piper") or name.startswith("espeak:"):
        return
    raise _error(f"voice={name!r}: use {VOICE_NAMES}")


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


def make_tts(name: str) -> Any:
    check_voice_name(name)
    if name == "piper":
        from .tts.piper import PiperTTS

        return PiperTTS()
    from .tts.espeak import EspeakTTS

    return EspeakTTS(voice=name.partition(":")[2] or "en-us")


def make_stt(settings: Settings) -> Any:
    from .stt import WhisperSTT

    return WhisperSTT(model_dir=settings.stt_model_dir)


async def warm_up(llm: Any, stt: Any, tools: bool) -> None:
    load = getattr(stt, "load", None)
    if load is not None:
        await load()
    load_llm = getattr(llm, "load", None)
    if load_llm is not None:
        await load_llm(tools=tools)

"""What the agent does when the caller's emotion sets in: the triggers.

``Agent(emotion_triggers={...})`` maps a state (``frustrated``,
``confused``, ``urgent``, ``satisfied``, or the nouns ``frustration``,
``confusion``, ``urgency``, ``satisfaction``) to what to do when it is
announced:

- a number in (0, 1]: the threshold at which it is announced;
- a callable returning a line (``lambda: "I understand..."``, or one
  taking ``(call, emotion)``, sync or async): the agent says it first in
  its reply to that turn, and the model is told it was said;
- a string: ``"escalate"`` (hand the caller to a person, as if they had
  asked), ``"slow_down"`` (the patient turn-taking style and a calmer
  voice for the rest of the call), or any other text, said as the line;
- a dict with any of ``threshold``, ``say`` and ``action``, or a tuple of
  the forms above, for more than one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import log
from ..providers.emotion import CONFUSED, FRUSTRATED, SATISFIED, STATES, URGENT, Emotion

logger = log.get(__name__)

ESCALATE = "escalate"
SLOW_DOWN = "slow_down"
ACTIONS = (ESCALATE, SLOW_DOWN)
NAMES = {
    FRUSTRATED: FRUSTRATED,
    "frustration": FRUSTRATED,
    CONFUSED: CONFUSED,
    "confusion": CONFUSED,
    URGENT: URGENT,
    "urgency": URGENT,
    SATISFIED: SATISFIED,
    "satisfaction": SATISFIED,
}


@dataclass(frozen=True)
class Trigger:
    state: str
    threshold: float | None = None
    say: Callable[..., Any] | str | None = None
    action: str | None = None


def state_name(name: str) -> str:
    """The state a trigger's name means; ValueError naming the choices."""
    state = NAMES.get(name.strip().lower())
    if state is None:
        raise ValueError(f"unknown emotion {name!r}: one of {', '.join(NAMES)}")
    return state


def parse_triggers(spec: Mapping[str, Any] | None) -> dict[str, Trigger]:
    """The triggers of ``Agent(emotion_triggers=...)``, checked: a mistake
    raises ValueError saying what to write instead."""
    out: dict[str, Trigger] = {}
    for name, value in (spec or {}).items():
        state = state_name(str(name))
        parts: dict[str, Any] = {}
        for form in value if isinstance(value, tuple | list) else (value,):
            parts.update(_one(state, form))
        out[state] = Trigger(state, **parts)
    return out


def _one(state: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        raise ValueError(f"emotion_triggers[{state!r}]: a threshold, a line, or an action")
    if isinstance(value, int | float):
        if not 0 < float(value) <= 1:
            raise ValueError(f"emotion_triggers[{state!r}]: a threshold is in (0, 1], not {value}")
        return {"threshold": float(value)}
    if isinstance(value, str):
        if value in ACTIONS:
            return {"action": value}
        if value.replace("-", "_").lower() in ACTIONS or not value.strip():
            raise ValueError(
                f"emotion_triggers[{state!r}]={value!r}: the actions are {', '.join(ACTIONS)}"
            )
        return {"say": value}
    if callable(value):
        return {"say": value}
    if isinstance(value, Mapping):
        unknown = set(value) - {"threshold", "say", "action"}
        if unknown:
            raise ValueError(
                f"emotion_triggers[{state!r}]: unknown keys {sorted(unknown)} "
                "(threshold, say, action)"
            )
        parts: dict[str, Any] = {}
        if "threshold" in value:
            parts.update(_one(state, float(value["threshold"])))
        if "action" in value:
            if value["action"] not in ACTIONS:
                raise ValueError(
                    f"emotion_triggers[{state!r}]: action is one of {', '.join(ACTIONS)}"
                )
            parts["action"] = value["action"]
        if "say" in value:
            parts.update(_one(state, value["say"]))
        return parts
    raise ValueError(
        f"emotion_triggers[{state!r}]: a threshold, a line (text or a callable), "
        f"or an action ({', '.join(ACTIONS)}), not {type(value).__name__}"
    )


def thresholds(triggers: Mapping[str, Trigger]) -> dict[str, float]:
    return {s: t.threshold for s, t in triggers.items() if t.threshold is not None}


async def line_of(trigger: Trigger, call: Any, emotion: Emotion) -> str | None:
    """The line a trigger says (None: nothing, or its callable failed)."""
    say = trigger.say
    if say is None:
        return None
    if isinstance(say, str):
        return say
    try:
        try:
            wants = len(inspect.signature(say).parameters)
        except (TypeError, ValueError):
            wants = 0
        result = say(call, emotion) if wants >= 2 else say(emotion) if wants == 1 else say()
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:  # noqa: BLE001 - a user's callable must not break the reply
        logger.error(log.kv(event="emotion_trigger_failed", state=trigger.state, error=repr(exc)))
        return None
    return str(result).strip() or None if result is not None else None


__all__ = ["ACTIONS", "ESCALATE", "NAMES", "SLOW_DOWN", "STATES", "Trigger", "parse_triggers"]

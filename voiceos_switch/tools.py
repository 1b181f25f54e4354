"""Plain Python functions as LLM tools: the JSON schema comes from type hints.

Below both the models (which send the schemas) and the turn loop (which
runs the tools): it imports nothing of the package."""

from __future__ import annotations

import asyncio
import enum
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_for(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _schema_for(members[0])
        return {"anyOf": [_schema_for(a) for a in members]}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (list, tuple, set):
        items = typing.get_args(tp)
        return {"type": "array", "items": _schema_for(items[0]) if items else {}}
    if origin is dict:
        return {"type": "object"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if tp in _JSON_TYPES:
        return {"type": _JSON_TYPES[tp]}
    return {"type": "string"}


_READ_ONLY = "__voiceos_read_only__"

F = typing.TypeVar("F", bound=Callable[..., Any])


@typing.overload
def tool(fn: F, *, read_only: bool = False) -> F: ...


@typing.overload
def tool(fn: None = None, *, read_only: bool = False) -> Callable[[F], F]: ...


def tool(fn: F | None = None, *, read_only: bool = False) -> F | Callable[[F], F]:
    """Mark a function as a tool that only looks things up (``read_only``):
    the agent may run it while the caller's turn is still unconfirmed, so the
    answer is ready when they stop. Tools are taken to have side effects
    otherwise, and never run before the turn is the caller's.

    ::

        @tool(read_only=True)
        def lookup_order(order_number: str) -> dict: ...
    """

    def mark(f: F) -> F:
        setattr(f, _READ_ONLY, read_only)
        return f

    return mark(fn) if fn is not None else mark


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    #: only looks things up: may run before the caller's turn is confirmed
    read_only: bool = False

    @classmethod
    def from_function(cls, fn: Callable[..., Any]) -> Tool:
        hints = typing.get_type_hints(fn)
        sig = inspect.signature(fn)
        props: dict[str, Any] = {}
        required: list[str] = []
        doc = inspect.getdoc(fn) or ""
        for name, param in sig.parameters.items():
            if name in ("self", "call") or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            props[name] = _schema_for(hints.get(name, str))
            if param.default is inspect.Parameter.empty:
                required.append(name)
        return cls(
            name=fn.__name__,
            description=doc.split("\n\n")[0] or fn.__name__.replace("_", " "),
            parameters={"type": "object", "properties": props, "required": required},
            fn=fn,
            read_only=bool(getattr(fn, _READ_ONLY, False)),
        )

    def openai_schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def run(self, arguments: str | dict[str, Any], call: Any = None) -> str:
        """Call the function (given the call, if it takes a ``call``
        argument); the result (or the error) as text for the LLM."""
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            known = {k: v for k, v in args.items() if k in self.parameters["properties"]}
            if "call" in inspect.signature(self.fn).parameters:
                known["call"] = call
            if inspect.iscoroutinefunction(self.fn):
                result = await self.fn(**known)
            else:
                result = await asyncio.to_thread(self.fn, **known)
        except Exception as exc:
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return result if isinstance(result, str) else json.dumps(result, default=str)


async def transfer_to_human(call: Any, reason: str = "") -> str:
    """Hand the caller to a human agent: when they ask for a person, or
    when you cannot help them."""
    call.request_person("model")  # on the event loop (a coroutine: no worker thread)
    return json.dumps({"handed_over": True, "reason": reason})

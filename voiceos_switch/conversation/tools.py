"""Plain Python functions as LLM tools: the JSON schema comes from type hints."""

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


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]

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

    async def run(self, arguments: str | dict[str, Any]) -> str:
        """Call the function; the result (or the error) as text for the LLM."""
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
            known = {k: v for k, v in args.items() if k in self.parameters["properties"]}
            if inspect.iscoroutinefunction(self.fn):
                result = await self.fn(**known)
            else:
                result = await asyncio.to_thread(self.fn, **known)
        except Exception as exc:
            return json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        return result if isinstance(result, str) else json.dumps(result, default=str)

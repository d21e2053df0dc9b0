"""Whether data read back from outside (a catalog row, a sidecar, a manifest from a bucket) has
the shape of one of our dataclasses: every required field there, every value of its type. Read
back data is never trusted to be what we wrote; a value of the wrong type must be one line, not
a TypeError somewhere later."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal


def is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes read back
        return False
    return True


def fits(value: object, hint: Any) -> bool:
    return _checker(hint)(value)


def _number(value: object) -> bool:
    # a number is a number: a 3.0 for a count is no damage
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past any float (400 digits in a record read back)
        return False


def _string(value: object) -> bool:
    return isinstance(value, str) and is_utf8(value)


@functools.cache
def _checker(hint: Any) -> Callable[[object], bool]:
    """hint's test, worked out once per hint: a catalog read tests every field of every row."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return lambda value: True
    if origin in (typing.Union, types.UnionType):
        each = tuple(_checker(a) for a in args)
        return lambda value: any(test(value) for test in each)
    if hint is type(None):
        return lambda value: value is None
    if origin is Literal:
        return lambda value: value in args
    if hint is bool:
        return lambda value: isinstance(value, bool)
    if hint in (int, float):
        return _number
    if hint is str:
        return _string
    if origin is dict:
        item = _checker(args[1])
        return lambda value: (
            isinstance(value, dict)
            and all(isinstance(k, str) and item(v) for k, v in value.items())
        )
    if origin is list:
        element = _checker(args[0])
        return lambda value: isinstance(value, list) and all(element(v) for v in value)
    return lambda value: True


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


@functools.cache
def _fields_of(cls: type) -> tuple[dict[str, Any], tuple[dataclasses.Field[Any], ...]]:
    """cls's resolved type hints and fields, worked out once: resolving string annotations
    compiles each of them, which cost a catalog read about 0.7 ms per record."""
    return typing.get_type_hints(cls), dataclasses.fields(cls)


def shape_problem(
    cls: type, data: object, *, skip: frozenset[str] = frozenset(), strict: bool = False
) -> str | None:
    """Why data cannot be cls(**data) (cls a dataclass): not an object, a required field
    missing, a value not of its field's type (or a string that is not UTF-8); None when it can.
    Fields in skip are left to the caller. Keys that are no field are ignored, or with strict
    are the problem."""
    if not isinstance(data, dict):
        return f"not a JSON object but {type(data).__name__}"
    if strict:
        unknown = sorted(set(data) - {f.name for f in _fields_of(cls)[1]})
        if unknown:
            return f"unknown field {unknown[0][:40]!r}"
    hints, fields = _fields_of(cls)
    for f in fields:
        if f.name in skip:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                return f"{f.name} is missing"
            continue
        value = data[f.name]
        if isinstance(value, str) and not is_utf8(value):
            return f"{f.name} is not valid UTF-8"
        if not fits(value, hints[f.name]):
            return f"{f.name} is {value!r:.60}, not {type_name(hints[f.name])}"
    return None

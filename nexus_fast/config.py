"""Typed, validated configurations: every model and trainer takes a dataclass or a plain dict.

`build_config(ConfigClass, value)` turns a dict (the seed's style), a dataclass instance or None
(the defaults) into a validated instance. An unknown key, a value of the wrong type or an
impossible value raises ValueError naming the key, the value and what is allowed: a misspelt key
never falls back silently to a default.

A config class declares its fields with type hints (int, float, bool, str, a Literal of allowed
values, a tuple of numbers, or Optional of those) and may define `validate(self)` for the rules
that tie fields together (an image size divisible by the patch size, ...), calling `require`.
"""

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

ConfigT = TypeVar("ConfigT")


def require(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raises ValueError("key=value: allowed") unless condition holds."""
    if not condition:
        raise ValueError(f"{key}={value!r} is not allowed: {allowed}")


def _describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(annotation))
    if origin is tuple:
        return f"a sequence of {len(get_args(annotation))} numbers"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """value converted to the field's type, or ValueError naming key, value and type."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        for option in get_args(annotation):
            try:
                return _coerce(key, value, option)
            except ValueError:
                continue
    elif origin is Literal:
        if value in get_args(annotation):
            return value
    elif origin is tuple:
        members = get_args(annotation)
        if isinstance(value, (list, tuple)) and len(value) == len(members):
            return tuple(_coerce(key, item, member) for item, member in zip(value, members))
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ValueError(f"{key}={value!r} is not allowed: expected {_describe(annotation)}")


def build_config(cls: type[ConfigT], value: "ConfigT | dict | None" = None) -> ConfigT:
    """A validated instance of the dataclass `cls` from a dict, an instance or None (defaults).

    Raises:
        ValueError: an unknown key (the message lists the allowed ones), a value of the wrong type
            or an impossible value (the message names the key, the value and what is allowed).
        TypeError: a value that is neither a dict, an instance of cls nor None.
    """
    if value is None:
        value = {}
    if isinstance(value, cls):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise TypeError(
            f"{cls.__name__}: expected a dict or a {cls.__name__}, got {type(value).__name__}"
        )
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(names)}"
        )
    coerced = {key: _coerce(key, item, hints[key]) for key, item in value.items()}
    config = cls(**coerced)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config

"""Parsing at the edge: the helpers every input's parse step uses, and the one designed error they raise.

Real producers are messier than documentation: ports as numbers or numeric strings, timestamps with "Z",
an offset, a space or no zone at all, EC2 lists as ``{"items": [...]}``, ``{}``, ``null`` or absent.
Those differences are normalised here, once. Anything else that is wrong becomes an ``InputError`` that
names the input (event id) and the field, never a TypeError or KeyError from deep inside.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from automations.core.clock import parse_time

MAX_JSON_DEPTH = 64  # deeper than any real payload; deeper input is refused, not recursed into
ACCOUNT_ID = re.compile(r"^\d{12}$")
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
# Names opsbot itself makes (task and check names, run ids): what comes back from a state machine.
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:#-]{0,255}$")


class InputError(ValueError):
    """An input opsbot cannot act on, naming which input and which field: a designed error."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(f"{source}: {field}: {problem}")


def mapping(value: Any, source: str, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InputError(source, field, f"expected an object, got {type(value).__name__}")
    return value


def optional_mapping(value: Any, source: str, field: str) -> Mapping[str, Any]:
    """An object, or nothing (``null`` or absent) as an empty one."""
    return {} if value is None else mapping(value, source, field)


def text(value: Any, source: str, field: str, *, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(source, field, f"expected a non-empty string, got {_shown(value)}")
    if pattern is not None and not pattern.match(value):
        raise InputError(source, field, f"{_shown(value)} does not match {pattern.pattern}")
    return value


def optional_text(value: Any, source: str, field: str) -> str | None:
    return None if value is None or value == "" else text(value, source, field)


def integer(value: Any, source: str, field: str) -> int:
    """A number as JSON gives it or as a numeric string ("22"); not a bool, not a fraction."""
    if isinstance(value, bool):
        raise InputError(source, field, f"expected a number, got {_shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,10}\s*", value):
        return int(value)
    raise InputError(source, field, f"expected a number, got {_shown(value)}")


def optional_integer(value: Any, source: str, field: str) -> int | None:
    return None if value is None or value == "" else integer(value, source, field)


def port(value: Any, source: str, field: str) -> int | None:
    """A port: 0-65535, or -1 / absent meaning "all" (as EC2 and CloudTrail write it)."""
    number = optional_integer(value, source, field)
    if number is not None and not -1 <= number <= 65535:
        raise InputError(source, field, f"port {number} is out of range")
    return number


def items(value: Any, source: str, field: str) -> list[Any]:
    """An EC2 list as CloudTrail renders it: ``{"items": [...]}``, ``{}``, ``null``, absent or a plain list."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        inner = value.get("items")
        if inner is None:
            return []
        if isinstance(inner, list):
            return inner
        raise InputError(source, f"{field}.items", f"expected a list, got {type(inner).__name__}")
    if isinstance(value, list):
        return value
    raise InputError(source, field, f"expected a list, got {type(value).__name__}")


def timestamp(value: Any, source: str, field: str) -> datetime:
    """ISO 8601 with "Z", an offset, a space or no zone (read as UTC); always aware."""
    try:
        return parse_time(text(value, source, field))
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(source, field, f"not a timestamp: {_shown(value)}") from None


def loads(body: str | bytes, source: str, field: str) -> Any:
    """JSON, refusing what is not JSON and what nests deeper than any real payload (no RecursionError)."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(source, field, "not UTF-8") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise InputError(source, field, f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InputError(source, field, "not JSON") from None


def _depth(body: str) -> int:
    """The deepest bracket nesting, outside strings: cheap, and decided before the parser recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for char in body:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def source_id(event: Any, key: str = "id") -> str:
    """How an input is named in errors: its id when it has a usable one."""
    if isinstance(event, Mapping):
        found = event.get(key)
        if isinstance(found, str) and found.strip():
            return f"event {found[:100]}"
    return "event (no id)"


def dumps_for_log(value: Any) -> str:
    """A bounded rendering of an input for a log line or a ledger record."""
    try:
        rendered = json.dumps(value, default=str)[:2000]
    except (ValueError, RecursionError):
        rendered = repr(type(value))
    return rendered

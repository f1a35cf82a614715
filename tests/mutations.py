"""Hypothesis strategies that mutate a real recorded payload the way real producers and attackers do.

A mutation picks a place in the JSON tree and does one of: drop the key, set it to null, swap in a
value of another type, turn a number into a numeric string (and back), put unicode in a string,
replace a timestamp with a zone-less or odd one, blow a list up to thousands of items, or bury a
value under deep nesting. One to three mutations are applied to a deep copy of the fixture.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

Path = tuple[str | int, ...]

# `make fuzz` runs the full profile; CI and `make test` a smaller one that fits their time.
settings.register_profile(
    "fuzz", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True
)
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TIMESTAMPS = [
    "2020-06-15 10:51:12.000",  # a SIEM export: no zone
    "2020-06-15T10:51:12",
    "2020-06-15T10:51:12+02:00",
    "2020-06-15T10:51:12.123456Z",
    "2019-10-02T17:04:40.989+0000",
    "yesterday",
    "",
    "2020-13-45T99:99:99Z",
]
ODD_VALUES: list[Any] = [
    None,
    "",
    0,
    -1,
    1.5,
    True,
    [],
    {},
    "22",
    " 22 ",
    "-1",
    "65536",
    "0.0.0.0/1",
    "::/0",
    "not-a-cidr",
    "sg-",
    "💥 ünïcödé \u202e\u0000",
    "x" * 5000,
    {"items": None},
    {"items": {}},
    [None],
    *TIMESTAMPS,
]


def paths(node: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every place in a JSON tree (the root excluded), down to a depth no real payload reaches."""
    if len(prefix) >= 40:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node[:20]):
            yield (*prefix, i)
            yield from paths(value, (*prefix, i))


def _get(node: Any, path: Path) -> Any:
    for part in path:
        node = node[part]
    return node


def _set(doc: Any, path: Path, value: Any) -> None:
    _get(doc, path[:-1])[path[-1]] = value


def _drop(doc: Any, path: Path) -> None:
    parent = _get(doc, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
    else:
        del parent[path[-1]]


def _swap_number(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        try:  # "¹" and other digits int() does not read stay as they are
            return int(value)
        except ValueError:
            return value
    return value


def _deep(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


Mutation = Callable[[Any, Path], None]


@st.composite
def mutated(draw: st.DrawFn, fixture: Any, max_mutations: int = 3) -> tuple[Any, list[str]]:
    """A mutated deep copy of ``fixture`` and a description of what was done (for failure reports)."""
    doc = copy.deepcopy(fixture)
    done: list[str] = []
    for _ in range(draw(st.integers(1, max_mutations))):
        places = list(paths(doc))
        if not places:
            break
        path = draw(st.sampled_from(places))
        op = draw(st.sampled_from(["drop", "null", "odd", "number", "unicode", "huge", "deep", "time"]))
        current = _get(doc, path)
        if op == "drop":
            _drop(doc, path)
        elif op == "null":
            _set(doc, path, None)
        elif op == "odd":
            _set(doc, path, copy.deepcopy(draw(st.sampled_from(ODD_VALUES))))
        elif op == "number":
            _set(doc, path, _swap_number(current))
        elif op == "unicode":
            _set(doc, path, draw(st.text(min_size=0, max_size=30)))
        elif op == "huge":
            # Once per payload: two blown-up lists nested in each other would be millions of items,
            # more than any producer sends (and than the machine running the tests holds).
            if any(d.startswith("huge") for d in done):
                continue
            _set(doc, path, [copy.deepcopy(current)] * draw(st.sampled_from([2, 500, 5000])))
        elif op == "deep":
            # Once per payload, up to 300 levels: deeper than any real payload, and still within what
            # json.dumps (and hypothesis's own report of a failing example) can carry.
            if any(d.startswith("deep") for d in done):
                continue
            _set(doc, path, _deep(current, draw(st.sampled_from([10, 100, 300]))))
        else:
            _set(doc, path, draw(st.sampled_from(TIMESTAMPS)))
        done.append(f"{op} at {'/'.join(map(str, path))}")
    return doc, done

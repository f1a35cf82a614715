"""Rules compiled ahead of time: a rules file validated once, at package time, and read back at cold start
without YAML or JSON-schema (neither is imported then).

``make package`` writes ``<rules dir>/_compiled/<file>.json`` for the files a latency-bound handler reads
(``python -m automations.security_groups.compiled <rules dir>``). Each holds the loaded value as plain
JSON and the digest of what it was compiled from: the file's text and the schema that validated it. A
loader uses it only when both digests still match; otherwise (an edited file, a fleet from the SSM
parameter that differs from the packaged file, a changed schema or loader) it parses and validates as
before. So a compiled file can be stale only in speed, never in content.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

COMPILED_DIR = "_compiled"  # not a dot-directory: packagers may leave those out
FORMAT = 1


def digest(text: str, depends_on: Sequence[Path]) -> str:
    """What a compiled value depends on: the rules text, the files that validate and convert it (its
    schema, the loader's module), and this format's version."""
    h = hashlib.sha256(f"{FORMAT}\n".encode())
    for path in depends_on:
        h.update(path.read_bytes())
        h.update(b"\0")
    h.update(text.encode())
    return h.hexdigest()


def compiled_path(source: str | Path) -> Path:
    source = Path(source)
    return source.parent / COMPILED_DIR / f"{source.name}.json"


def read(source: str | Path, text: str, *depends_on: Path) -> Any | None:
    """The compiled value of ``source`` if one was compiled from exactly this text and these files."""
    path = compiled_path(source)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("digest") != digest(text, depends_on):
        return None
    return stored.get("value")


def write(source: str | Path, text: str, value: Any, *depends_on: Path) -> Path:
    path = compiled_path(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"digest": digest(text, depends_on), "value": value}, indent=1, sort_keys=True) + "\n")
    return path


def command(argv: list[str], module: str, compile_rules: Callable[[Path], list[Path]]) -> int:
    """``python -m <module> <rules dir>``: compile, print each file written; a rules problem fails the build
    with every problem as ``file:line: message``."""
    from automations.core.rulebook import RulebookError

    if len(argv) != 1:
        print(f"usage: python -m {module} <rules dir>", file=sys.stderr)
        return 2
    try:
        for path in compile_rules(Path(argv[0])):
            print(f"compiled {path}")
    except RulebookError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0

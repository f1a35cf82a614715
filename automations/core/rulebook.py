"""Load declarative rule files (YAML) and report every problem as ``file:line: message``.

A document's JSON schema lives next to the code that reads it (``<package>/schemas/*.json``), or is
assembled from the registry of kinds (tasks). Schema errors are mapped back to the YAML node that
caused them so an operator sees the line to fix.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:  # imported where used: a handler reading compiled rules needs neither (core/compiled.py)
    import jsonschema
    import yaml

Path_ = tuple[str | int, ...]
# The rules/ directory beside automations/ (in the repository and in the Lambda package alike).
DEFAULT_RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RulebookError(Exception):
    """Raised with every problem found in a rules file, not only the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class LoadedDocument:
    """A parsed rules document plus the line of every node, for pointing at problems."""

    file: str
    data: Any
    lines: dict[Path_, int]

    def line_of(self, path: Iterable[str | int]) -> int:
        """Line of the deepest node along ``path`` that exists (1-based)."""
        key = tuple(path)
        while key and key not in self.lines:
            key = key[:-1]
        return self.lines.get(key, 1)

    def problem(self, path: Iterable[str | int], message: str) -> Problem:
        path = tuple(path)
        where = format_path(path)
        return Problem(self.file, self.line_of(path), f"{where}: {message}" if where else message)


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _construct(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[Problem], file: str) -> Any:
    """Build plain Python data from a composed YAML node, recording each node's line."""
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(Problem(file, key_node.start_mark.line + 1, "mapping keys must be plain strings"))
                continue
            key = key_node.value
            if key in out:
                problems.append(
                    Problem(
                        file,
                        key_node.start_mark.line + 1,
                        f"{format_path(path) or 'document'}: duplicate key {key!r}",
                    )
                )
            out[key] = _construct(value_node, (*path, key), lines, problems, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, (*path, i), lines, problems, file) for i, child in enumerate(node.value)]
    # Scalars: let the safe constructor resolve ints, bools, nulls exactly as yaml.safe_load would.
    return yaml.SafeLoader(yaml.serialize(node)).get_single_data()


def load_document(file: str | Path, text: str | None = None) -> LoadedDocument:
    """Parse YAML (or JSON, which is YAML) keeping line numbers. Raises RulebookError on syntax errors."""
    import yaml

    name = str(file)
    if text is None:
        text = Path(file).read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RulebookError([Problem(name, line, f"YAML syntax error: {exc.problem}")]) from exc
    lines: dict[Path_, int] = {}
    problems: list[Problem] = []
    data = _construct(node, (), lines, problems, name) if node is not None else None
    if problems:
        raise RulebookError(problems)
    return LoadedDocument(name, data, lines)


@cache
def load_schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown key(s)")
    return error.message


def schema_problems(doc: LoadedDocument, schema: dict[str, Any]) -> list[Problem]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(doc.data), key=lambda e: list(map(str, e.absolute_path))):
        # For "oneOf"/"anyOf" the most specific sub-error points at the real culprit.
        best = jsonschema.exceptions.best_match([error]) or error
        path: list[str | int] = list(best.absolute_path)
        if best.validator == "additionalProperties" and isinstance(best.instance, dict):
            allowed = set(best.schema.get("properties", {}))
            extra = [k for k in best.instance if k not in allowed]
            if extra:
                path.append(extra[0])
        problems.append(doc.problem(path, _describe(best)))
    return problems


Check = Callable[[LoadedDocument], list[Problem]]


def validate_document(doc: LoadedDocument, schema: Path | dict[str, Any], checks: Iterable[Check] = ()) -> None:
    """Schema first (a file next to the code, or one assembled from kinds); semantic checks only when
    the shape is right (they assume it)."""
    problems = schema_problems(doc, load_schema(schema) if isinstance(schema, Path) else schema)
    if not problems:
        for check in checks:
            problems.extend(check(doc))
    if problems:
        raise RulebookError(sorted(problems, key=lambda p: (p.file, p.line)))


T = TypeVar("T")


@dataclass(frozen=True)
class RuleFile(Generic[T]):
    """One file of the rules directory and the loader that turns it into typed values."""

    name: str  # e.g. "security_groups.yaml"
    load: Callable[[Path], T]


class RuleSource:
    """The rules directory, each file loaded (and validated) once, on first use, by whoever needs it.

    Kinds ask for the files they need (a sweep asks for the security-group policy); tests hand in
    values already loaded, keyed by file name."""

    def __init__(self, directory: Path, loaded: Mapping[str, Any] | None = None) -> None:
        self.directory = directory
        self._loaded: dict[str, Any] = dict(loaded or {})
        self._lock = threading.Lock()

    def get(self, file: RuleFile[T]) -> T:
        with self._lock:
            if file.name not in self._loaded:
                self._loaded[file.name] = file.load(self.directory / file.name)
            value: T = self._loaded[file.name]
            return value

    def exists(self, file: RuleFile[Any]) -> bool:
        return file.name in self._loaded or (self.directory / file.name).exists()

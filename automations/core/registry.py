"""A typed registry of kinds: task kinds, breach checks and kill-switch kinds each register themselves here.

In the spirit of Cloud Custodian's resource/filter/action registries, but typed: a kind is a class whose
class attributes declare its name, its rules-schema fragment and the IAM actions it needs, and whose
methods are its runner. Everything else is read from the registry, never from a second list:
``opsbot validate`` assembles its schemas from it, and tests compare it with the templates' roles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Kind(Protocol):
    @property
    def name(self) -> str: ...


K = TypeVar("K", bound=Kind)


class UnknownKindError(ValueError):
    pass


class Registry(Generic[K]):
    """The kinds of one sort, by name. Kinds are stateless: one instance each."""

    def __init__(self, sort: str, modules: tuple[str, ...] = ()) -> None:
        """``modules``: where the kinds are, imported on the first read of the registry (not when it is
        defined), so code that only needs a kind's types does not load every kind (cold starts)."""
        self.sort = sort
        self._kinds: dict[str, K] = {}
        self._modules = modules
        self._lock = threading.RLock()
        self._loading = False

    def _load(self) -> None:
        if not self._modules:
            return
        with self._lock:  # one thread imports; the others wait for every kind, not a half-filled registry
            if not self._modules or self._loading:
                return  # done, or read by the imports themselves (this thread holds the lock)
            import importlib

            self._loading = True
            try:
                for module in self._modules:  # an ImportError surfaces as itself, here and on the next read
                    importlib.import_module(module)
                self._modules = ()
            finally:
                self._loading = False

    def register(self, cls: type[K]) -> type[K]:
        """Class decorator: ``@TASK_KINDS.register`` above a kind's class."""
        kind = cls()
        if kind.name in self._kinds:
            raise ValueError(f"{self.sort} {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind
        return cls

    def get(self, name: str) -> K:
        self._load()
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKindError(f"unknown {self.sort} {name!r}; known: {self.names()}") from None

    def names(self) -> list[str]:
        """Sorted, so schemas and messages do not depend on the order packages were imported in."""
        self._load()
        return sorted(self._kinds)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._kinds

    def __iter__(self) -> Iterator[K]:
        return iter([self._kinds[name] for name in self.names()])

    def __len__(self) -> int:
        self._load()
        return len(self._kinds)

"""A time budget, so a unit stops starting new work before its Lambda is killed and can close cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    remaining_ms: Callable[[], int]
    margin_ms: int = 30_000

    def near(self) -> bool:
        return self.remaining_ms() <= self.margin_ms

    @classmethod
    def after(cls, seconds: float, margin_ms: int = 0, clock: Callable[[], float] = time.monotonic) -> Deadline:
        end = clock() + seconds
        return cls(lambda: int((end - clock()) * 1000), margin_ms)

    @classmethod
    def never(cls) -> Deadline:
        return cls(lambda: 2**31, 0)

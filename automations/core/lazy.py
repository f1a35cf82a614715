"""An object made on its first use: clients and resources a path may never touch cost it nothing.

A boto3 client costs 10-20 ms of CPU to make and the DynamoDB resource about 35 ms (boto3 lists every
service's resource model first); on a Lambda cold start that is latency, so what the first revoke does
not need is made when, and on the thread where, it is first used.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Lazy:
    """Stands in for ``make()``'s result; the first attribute read makes it (once, under a lock)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make, self._made, self._lock = make, None, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._make()
        return getattr(self._made, name)

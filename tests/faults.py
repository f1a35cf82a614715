"""Faults injected into the process that runs opsbot, through botocore's own event hooks (on moto).

Registered on a boto3 Session before any client is made, so every client opsbot makes from it (the
ledger table, member clients from the broker, SNS) carries them:

  - ``lost``: the K-th call of an operation is applied by AWS, then its reply is lost. With botocore's
    retries on, botocore sends it again (as it would after a 500 or a timeout); with them off (opsbot's
    own creates), the caller sees a read timeout.
  - ``throttle``: 30 % of calls to mutating operations are refused before they are applied (the
    connection is closed), and retried by botocore or by opsbot.
  - ``kill``: the process dies right after the N-th mutating call is applied (``Killed``, a
    BaseException, so no ``except Exception`` in opsbot catches it).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

MUTATING = {
    "ec2": {
        "CreateSnapshot",
        "CopySnapshot",
        "DeleteSnapshot",
        "ModifySnapshotAttribute",
        "RevokeSecurityGroupIngress",
        "RevokeSecurityGroupEgress",
        "CreateTags",
    },
    "dynamodb": {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"},
    "sns": {"Publish"},
    "lambda": {"PutFunctionConcurrency", "DeleteFunctionConcurrency", "UpdateEventSourceMapping"},
    "events": {"DisableRule", "EnableRule"},
}


class Killed(BaseException):
    """The process running opsbot died here."""


def _name(operation: Any) -> tuple[str, str]:
    return operation.service_model.service_name, operation.name


def mutating(operation: Any) -> bool:
    service, name = _name(operation)
    return name in MUTATING.get(service, set())


@dataclass
class Injector:
    mode: str = "off"  # off | lost | throttle | kill
    target: tuple[str, str] | None = None  # (service, operation) for "lost"
    nth: int = 1  # which call of the target loses its reply; after which mutating call the process dies
    rate: float = 0.3
    seed: int = 7
    unreadable_metrics: bool = False  # CloudWatch answers every metric with StatusCode InternalError
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # applied mutating calls
    injected: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _mutations: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def install(self, session: boto3.Session) -> None:
        events = session.events
        events.register_first("before-send", self._before_send)
        events.register("needs-retry", self._needs_retry)
        events.register("after-call", self._after_call)

    def _before_send(self, request: Any, event_name: str = "", **kwargs: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if self.mode != "throttle" or not any(operation in ops for ops in MUTATING.values()):
            return
        with self._lock:
            refused = self._random.random() < self.rate
        if refused:
            self.injected.append(f"throttled {operation}")
            raise ConnectionClosedError(endpoint_url=request.url)

    def _needs_retry(self, response: Any, operation: Any, attempts: int, request_dict: Any, **kwargs: Any) -> Any:
        if self.mode != "lost" or response is None or _name(operation) != self.target:
            return None
        http = response[0]
        if http.status_code >= 300:
            return None
        with self._lock:
            self.calls[_name(operation)] += 1
            hit = self.calls[_name(operation)] == self.nth and attempts == 1
        if not hit:
            return None
        self.injected.append(f"lost the reply of {'.'.join(_name(operation))} #{self.nth}")
        retries = (request_dict.get("context") or {}).get("client_config")
        config = getattr(retries, "retries", None) or {}
        if config.get("total_max_attempts") == 1:  # opsbot's own creates: the caller sees the timeout
            raise ReadTimeoutError(endpoint_url=request_dict.get("url", "?"))
        return 0  # botocore sends it again, as after a 500 or a timeout

    def _after_call(self, model: Any, http_response: Any, parsed: Any = None, **kwargs: Any) -> None:
        if self.unreadable_metrics and model.name == "GetMetricData" and isinstance(parsed, dict):
            for result in parsed.get("MetricDataResults", []):
                result["StatusCode"], result["Values"] = "InternalError", []
        if self.mode != "kill" or not mutating(model) or http_response.status_code >= 300:
            return
        with self._lock:
            self._mutations += 1
            die = self._mutations == self.nth
        if die:
            self.injected.append(f"killed after {'.'.join(_name(model))} (mutating call #{self.nth})")
            raise Killed()


@dataclass
class Census:
    """Counts the mutating calls a scenario makes, by operation (to enumerate the fault matrix)."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)

    def install(self, session: boto3.Session) -> None:
        session.events.register("after-call", self._after_call)

    def _after_call(self, model: Any, http_response: Any, **kwargs: Any) -> None:
        if mutating(model) and http_response.status_code < 300:
            self.calls[_name(model)] += 1

"""Errors shared by every capability, and how an AWS error reads in a record or a message."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

# Throttling and server-side errors: the call may be tried again (after looking for its result).
RETRYABLE_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "InternalError", "ServiceUnavailable", "Unavailable"}
)


class NotStarted(Exception):
    """Too close to the time limit to start: left for a re-run, and recorded so."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def error_text(exc: BaseException) -> str:
    """``Code: message`` for an AWS error, ``Type: message`` for anything else."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'ClientError')}: {err.get('Message', '')}"
    return f"{type(exc).__name__}: {exc}"


def retryable(exc: BaseException) -> bool:
    """A failure worth trying again: connection trouble (the reply is what was lost), throttling, a 5xx."""
    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in RETRYABLE_CODES or status >= 500
    return False

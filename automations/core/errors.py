"""Errors shared by every capability, and how an AWS error reads in a record or a message."""

from __future__ import annotations

from botocore.exceptions import ClientError


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

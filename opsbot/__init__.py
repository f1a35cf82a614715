"""Operator tooling: the `opsbot` CLI and the local embedded AWS. Not part of the Lambda package."""

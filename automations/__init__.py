"""opsbot business logic: the shared plumbing (``core``) and one package per capability (``snapshots``,
``security_groups``, ``breach_checks``, ``kill_switches``); ``catalog`` imports them all. See docs/architecture.md.

Nothing in this package reads environment variables or knows whether it runs in Lambda,
in tests or against the local embedded AWS: callers pass sessions, clients and settings in.
"""

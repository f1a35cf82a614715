"""opsbot business logic: one module per automation plus the shared plumbing they use.

Nothing in this package reads environment variables or knows whether it runs in Lambda,
in tests or against the local embedded AWS: callers pass sessions, clients and settings in.
"""

"""The shared plumbing every capability uses: ledger, fleet, rulebook, runs, notify, the registry of kinds.

Nothing in this package imports a capability (snapshots, security_groups, breach_checks, kill_switches):
it knows kinds only through the registries in ``automations.core.registry``.
"""

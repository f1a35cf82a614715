"""``python -m opsbot.local.function_worker``: one hub function in its own process, as Lambda runs it:
with its role's credentials in the environment (opsbot/local/events.py starts it with them), its
handler imported once and invoked once per request.

Arguments: handlers (module.function) to import at once, before the first event.
Protocol: one JSON object a line on stdin, ``{"handler": "module.function", "event": {...}}``; one a
line back, ``{"result": ...}`` or ``{"error": "...", "traceback": "..."}``. What the handler prints
(its logs) goes to stderr, so it never mixes with the answers.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the handler's own stdout (Powertools logs, EMF) goes to stderr
    sys.stdout = sys.stderr
    import importlib

    from opsbot.local.events import call_handler_here

    for handler in sys.argv[1:]:  # imported before the first event: a container started ahead (prewarm)
        importlib.import_module(handler.rpartition(".")[0])
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            answer = {"result": call_handler_here(request["handler"], request["event"])}
        except Exception as exc:  # reported to the caller, which raises it there
            answer = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        answers.write(json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    main()

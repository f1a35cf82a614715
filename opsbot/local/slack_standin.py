"""A loopback stand-in for the Slack Web API: accepts the calls opsbot makes (through slack-sdk's
``WebClient(base_url=...)``), checks the bot token, records every call and prints it readably.

Response bodies follow Slack's documented shapes (see tests/fixtures/slack/).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

CHANNEL_ID = "C0LOCALOPS"


def render(payload: dict[str, Any]) -> str:
    """Block Kit as plain text, roughly as Slack lays it out."""
    lines = [f"--- Slack #{str(payload.get('channel', '?')).lstrip('#')} ---"]
    for block in payload.get("blocks") or []:
        kind = block.get("type")
        if kind == "header":
            lines.append(f"== {block['text']['text']} ==")
        elif kind == "section":
            if text := block.get("text"):
                lines.append(text["text"])
            for f in block.get("fields", []):
                lines.append("  " + f["text"].replace("\n", ": ", 1))
        elif kind == "context":
            lines.append("  (" + " ".join(e.get("text", "") for e in block.get("elements", [])) + ")")
        elif kind == "actions":
            lines.append("  [" + "] [".join(e["text"]["text"] for e in block.get("elements", [])) + "]")
    if len(lines) == 1:
        lines.append(str(payload.get("text", "")))
    return "\n".join(lines)


class SlackStandIn:
    def __init__(
        self,
        token: str,
        port: int = 0,
        echo: Callable[[str], None] | None = None,
        user_groups: dict[str, list[str]] | None = None,
    ):
        self.token = token
        self.user_groups = user_groups or {}
        self.calls: list[dict[str, Any]] = []
        self.echo = echo
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def __enter__(self) -> SlackStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def response_url(self) -> str:
        """A per-message response_url, as Slack puts in interaction payloads, answered by this stand-in."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/actions/T0LOCAL/{uuid.uuid4().hex[:12]}"

    def messages(self, method: str = "chat.postMessage") -> list[dict[str, Any]]:
        with self._lock:
            return [c["payload"] for c in self.calls if c["method"] == method]

    def _answer(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        ts = f"{time.time():.6f}"
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://opsbot-local.slack.com/",
                "team": "opsbot local",
                "user": "opsbot",
                "team_id": "T0LOCAL",
                "user_id": "U0OPSBOT",
                "bot_id": "B0OPSBOT",
            }
        if method == "usergroups.users.list":
            group = payload.get("usergroup", "")
            if group not in self.user_groups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": self.user_groups[group]}
        if method in ("chat.postMessage", "chat.update"):
            message = {
                "type": "message",
                "subtype": "bot_message",
                "text": payload.get("text", ""),
                "ts": payload.get("ts", ts),
                "bot_id": "B0OPSBOT",
                "blocks": payload.get("blocks", []),
            }
            return {"ok": True, "channel": CHANNEL_ID, "ts": payload.get("ts", ts), "message": message}
        return {"ok": False, "error": "unknown_method"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if self.path.startswith("/actions/"):  # a response_url: no token, the URL is the secret
                    payload = json.loads(body or "{}")
                    with standin._lock:
                        standin.calls.append({"method": "response_url", "url": self.path, "payload": payload})
                    if standin.echo:
                        standin.echo(render({"channel": "(response_url)", **payload}))
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    return
                method = self.path.rsplit("/", 1)[-1]
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    payload = json.loads(body or "{}")
                else:
                    payload = {k: v[0] for k, v in parse_qs(body).items()}
                    if isinstance(payload.get("blocks"), str):
                        payload["blocks"] = json.loads(payload["blocks"])
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {standin.token}":
                    answer: dict[str, Any] = {"ok": False, "error": "invalid_auth"}
                else:
                    answer = standin._answer(method, payload)
                    with standin._lock:
                        standin.calls.append({"method": method, "payload": payload})
                    if standin.echo and method.startswith("chat."):
                        standin.echo(render(payload))
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def main() -> None:
    """Run the stand-in as its own process (``opsbot local up`` does this), logging calls as JSON lines."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Slack Web API stand-in on loopback")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()

    def append(text: str) -> None:
        with args.log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"at": time.time(), "text": text}) + "\n")

    with SlackStandIn(args.token, args.port, echo=append):
        threading.Event().wait()


if __name__ == "__main__":
    main()

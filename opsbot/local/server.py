"""Start and stop moto in server mode on loopback, and switch its IAM enforcement on and off.

State (endpoint, pid, hub operator keys) lives in ``.opsbot/local.json`` so later `opsbot` commands
find the local AWS without the user exporting anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opsbot.cfn import PROJECT_ROOT

STATE_DIR = Path(os.environ.get("OPSBOT_STATE_DIR", PROJECT_ROOT / ".opsbot"))
STATE_FILE = STATE_DIR / "local.json"
DEFAULT_PORT = 4566
HOST = "127.0.0.1"
# Two public AMIs copied from moto's own ec2/resources/amis.json.gz (Ubuntu 14.04, Amazon Linux 2017.09),
# instead of the thousands per region moto loads by default: describe_images then takes ms, not seconds.
AMIS_FILE = Path(__file__).with_name("amis.json")
# moto keeps accounts apart by credentials; these plain "testing" keys land in moto's default account,
# which plays the hub. They are moto's documented test values, not secrets.
BOOTSTRAP_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def endpoint(port: int) -> str:
    return f"http://{HOST}:{port}"


def read_state() -> dict[str, Any]:
    return json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}


def write_state(state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps(state, indent=2))


def is_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def start(port: int = DEFAULT_PORT, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Start moto's server as its own process and wait until it answers.

    It runs through opsbot/local/aws_shims.py, which adds (locally only) what moto lacks:
    lambda:GetAccountSettings and Service Quotas data."""
    url = endpoint(port)
    if is_up(url):
        raise RuntimeError(f"something already answers on {url}; pick another --port")
    log = open(log_file or os.devnull, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsbot.local.aws_shims", "-H", HOST, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MOTO_AMIS_PATH": str(AMIS_FILE)},
    )
    deadline = time.monotonic() + 30
    while not is_up(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"moto server did not start on {url} (exit {proc.returncode})")
        time.sleep(0.1)
    return proc


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def running(log_file: Path, port: int = 0) -> Iterator[str]:
    """A local AWS in its own process for the duration; yields its endpoint."""
    port = port or free_port()
    proc = start(port, log_file)
    try:
        yield endpoint(port)
    finally:
        stop(proc.pid)


def run_measured(script: str, arg: str, url: str, **extra: str) -> dict[str, Any]:
    """Run ``script ARG`` as its own process against the local AWS with the bootstrap (hub) keys;
    returns the JSON object its last line prints. The benchmarks measure that process alone."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE")}
    env.update(BOOTSTRAP_CREDENTIALS, AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION="us-east-1", **extra)
    out = subprocess.run(
        [sys.executable, script, *arg.split("=", 1)], env=env, check=True, stdout=subprocess.PIPE, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def set_enforce_iam(url: str, enforce: bool) -> None:
    """moto's own switch: after this, every request must be signed by a known key and allowed by IAM."""
    body = b"0" if enforce else b"inf"
    # Not form-encoded: moto reads the raw body, which Flask leaves empty for form posts.
    req = urllib.request.Request(
        f"{url}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=5):
        pass

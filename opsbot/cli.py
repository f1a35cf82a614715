"""`opsbot`: the operator CLI. Imports automations/ the way a handler does; never runs in Lambda."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from automations import catalog  # noqa: F401  (registers every kind: the CLI runs them all)
from automations.core.clock import parse_time
from automations.core.fleet import AccountAccessError
from automations.core.ledger import MAX_PAGE_SIZE, MAX_RUNS_LIMIT, LimitError, TokenError
from automations.core.rulebook import DEFAULT_RULES_DIR, RulebookError
from automations.core.runs import RunError, Trigger, plan_run, run_now
from automations.core.runtime import Runtime, Settings, build_notifier, build_runtime
from automations.core.schedules import ScheduleError
from automations.kill_switches.kinds import describe
from opsbot import environment
from opsbot.runs_view import ACTIONS, DEFAULT_PAGE_SIZE, UNITS, runs_table, show_run_lines
from opsbot.tables import table
from opsbot.validation import cmd_check_package, cmd_validate


# ---- runtime -------------------------------------------------------------------------------
def _runtime() -> Runtime:
    environment.activate()
    fleet_text = None
    if parameter := os.environ.get("OPSBOT_FLEET_PARAMETER"):  # on AWS: the deployed fleet document
        from aws_lambda_powertools.utilities import parameters

        fleet_text = str(parameters.get_parameter(parameter))
    return build_runtime(Settings.from_mapping(os.environ), environment.session(), fleet_text=fleet_text)


def _notifier(settings: Settings) -> Any:
    from aws_lambda_powertools.utilities import parameters

    secret = os.environ.get("OPSBOT_SLACK_SECRET_NAME")
    token = parameters.get_secret(secret) if secret else None
    return build_notifier(settings, environment.session(), str(token) if token else None)


def _caller() -> str:
    try:
        return str(environment.session().client("sts").get_caller_identity()["Arn"])
    except Exception:  # the principal is for the record only
        return os.environ.get("USER", "unknown")


# ---- run -----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    try:
        when = parse_time(args.slot) if args.slot is not None else datetime.now(UTC)
    except (ValueError, TypeError):
        print(f"error: --slot {args.slot!r} is not a time; give UTC like 2026-11-25T03:00Z", file=sys.stderr)
        return 2
    if when > datetime.now(UTC):
        print(f"error: --slot {args.slot!r} is in the future; a slot is a fire time that has come", file=sys.stderr)
        return 2
    rt = _runtime()
    trigger = Trigger(type="cli", principal=_caller(), event_time=when.isoformat())
    try:
        plan = plan_run(
            rt.ledger,
            rt.fleet,
            rt.tasks,
            args.task,
            trigger,
            when,
            accounts=args.account or None,
            regions=args.region or None,
            dry_run=True if args.dry_run else None,
            rules=rt.rules,
            manifests=rt.manifests,
        )
    except (RunError, ScheduleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run = run_now(
        plan,
        rt.tasks,
        rt.broker,
        rt.ledger,
        _notifier(rt.settings),
        rules=rt.rules,
        manifests=rt.manifests,
        caps=rt.caps,
    )
    print(runs_table([run]))
    return 0 if run["status"] == "SUCCEEDED" else 1


# ---- runs ----------------------------------------------------------------------------------
def _bounded(what: str, maximum: int) -> Any:
    """An argparse type: an int in 1..maximum, else a one-line usage error (exit 2), never a traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, not {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{what} must be between 1 and {maximum}, not {value}")
        return value

    return parse


def cmd_runs(args: argparse.Namespace) -> int:
    if args.action == "show" and not args.run_id:
        print("error: opsbot runs show RUN_ID", file=sys.stderr)
        return 2
    section = UNITS if args.units else ACTIONS if args.actions else None
    if args.action == "show" and args.token and section is None:
        print("error: --next continues one list: add --units or --actions (as printed with the token)", file=sys.stderr)
        return 2
    rt = _runtime()
    try:
        if args.action == "show":
            for block in show_run_lines(
                rt.ledger,
                args.run_id,
                section=section,
                page_size=args.page_size,
                token=args.token,
                all_pages=args.all,
            ):
                print(block, flush=True)
            return 0
        print(runs_table(rt.ledger.recent_runs(args.limit)))
    except (RunError, LimitError, TokenError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ---- kill switches and pause --------------------------------------------------------------------
def _switchboard(rt: Runtime, hub: bool = False) -> Any:
    from automations.kill_switches.policies import protection_of
    from automations.kill_switches.switchboard import CAPABILITY_NAME, Switchboard

    if hub:  # opsbot's own rules live in the hub: the operator's own session, no fleet (opsbot pause only)
        session: Any = environment.session()
        return Switchboard(
            rt.ledger.table, lambda account, region, service: session.client(service, region_name=region), None
        )
    clients = rt.broker.for_capability(CAPABILITY_NAME).client
    return Switchboard(rt.ledger.table, clients, rt.fleet, protection_of(rt.rules))


def _cli_actor() -> Any:
    from automations.kill_switches.switchboard import Actor

    caller = _caller()
    return Actor("cli", caller, caller.rsplit("/", 1)[-1])


def _report(results: list[Any]) -> int:
    """Each result on one line: done on stdout, refused or failed on stderr; non-zero if any was not done."""
    bad = [r for r in results if r.outcome in ("failed", "refused", "drifted", "stale")]
    for r in results:
        if r in bad:
            print(f"error: {r.sentence()}", file=sys.stderr)
        else:
            print(r.sentence())
    return 1 if bad else 0


def cmd_killswitch(args: argparse.Namespace) -> int:
    from automations.kill_switches.switchboard import SwitchError, Target

    if args.action == "alarms":
        return print_policy_alarms(args.rules)
    if args.action != "status" and not args.target:
        print("error: opsbot killswitch flip|restore TARGET", file=sys.stderr)
        return 2
    if args.force and args.action != "restore":
        print("error: --force applies to restore only", file=sys.stderr)
        return 2
    rt = _runtime()
    board = _switchboard(rt)
    if args.action == "status":
        items = board.flipped()
        print(
            table(
                ["TARGET", "ACCOUNT", "REGION", "SINCE", "BY", "WAS", "WHY"],
                [
                    [
                        f"{i['target']['kind']}:{i['target']['id']}",
                        i["target"]["account"],
                        i["target"]["region"],
                        i["flipped_at"],
                        f"{i['flipped_by']['type']}:{i['flipped_by'].get('name') or i['flipped_by']['id']}",
                        describe(i.get("previous")),
                        i.get("alert_id") or i.get("alarm") or i.get("group") or i.get("reason") or "",
                    ]
                    for i in items
                ],
            )
        )
        return 0
    try:
        target = Target.parse(args.target, args.account, args.region)
    except SwitchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # A target outside the fleet is a typo more often than not: say so before any AWS call. A switch
    # flipped while its account was in the fleet can still be restored.
    outside = board.in_fleet(target.account, target.region)
    if outside and (args.action == "flip" or not (board.state(target) or {}).get("flipped")):
        print(f"error: {target}: {outside}; opsbot acts only in the fleet", file=sys.stderr)
        return 2
    actor = _cli_actor()
    if args.action == "flip":
        result = board.flip(target, actor, reason=args.reason)
    else:
        result = board.restore(target, actor, force=args.force, reason=args.reason)
    return _report([result])


def print_policy_alarms(rules: str) -> int:
    """The alarms the kill-switch policies name, as template-member.yaml's KillSwitchAlarmNames wants them
    (members forward only these alarms' state changes; "-" when there is none)."""
    from pathlib import Path

    from automations.kill_switches.policies import POLICIES_FILE

    path = Path(rules) / POLICIES_FILE.name
    names = sorted({p.alarm for p in POLICIES_FILE.load(path).policies}) if path.exists() else []
    print(",".join(names) or "-")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    from automations.kill_switches import pause as pausing

    if args.force and args.command != "resume":
        print("error: --force applies to resume only", file=sys.stderr)
        return 2
    rt = _runtime()
    board = _switchboard(rt, hub=True)
    if args.command == "pause":
        session = environment.session()
        account = session.client("sts").get_caller_identity()["Account"]
        region = session.region_name or "us-east-1"
        results = pausing.pause(
            board, session.client("events"), account, region, _cli_actor(), scheduler=session.client("scheduler")
        )
    else:
        results = pausing.resume(board, _cli_actor(), force=args.force)
    if not results:
        print("nothing to do" if args.command == "pause" else "nothing paused by opsbot pause")
    return _report(results)


# ---- sweep: what the scheduled sweeper does ----------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    from automations.catalog import housekeeping

    rt = _runtime()
    result = housekeeping(rt, _notifier(rt.settings))
    for run in result.reaped:
        print(f"reaped {run['run_id']}: {run['status']} ({run.get('close_reason')})")
    for error in result.errors:
        print(f"could not sweep {error}", file=sys.stderr)
    pending = result.announcements["still_pending"]
    print(
        f"{len(result.reaped)} run(s) reaped; announcements: {result.announcements['delivered']} delivered, "
        f"{pending} still pending"
    )
    return 1 if pending or result.errors else 0


# ---- local ---------------------------------------------------------------------------------
def cmd_local(args: argparse.Namespace) -> int:
    from opsbot.local import lifecycle

    if args.action == "up":
        print(lifecycle.up(args.port, args.slack_port))
    elif args.action == "down":
        print(lifecycle.down())
    elif args.action == "seed":
        print(lifecycle.seed())
    elif args.action == "slack":
        print(lifecycle.slack_log())
    return 0


# ---- breach flags ----------------------------------------------------------------------------
def cmd_quotas(args: argparse.Namespace) -> int:
    from opsbot import quotas_cli

    rt = _runtime()
    if args.action == "runs":
        return quotas_cli.quotas_runs(rt, args.limit)
    return quotas_cli.quotas_check(rt, _notifier(rt.settings), _caller(), args)


def cmd_alerts(args: argparse.Namespace) -> int:
    from opsbot import quotas_cli

    return quotas_cli.alerts(_runtime(), args.alert_id)


def cmd_demo(args: argparse.Namespace) -> int:
    from opsbot.local.demo import demo

    return demo(args.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opsbot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check rules/ (and template schedules); file:line per problem")
    p.add_argument("--rules", default=str(DEFAULT_RULES_DIR))
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("check-package", help="a staged Lambda package: valid rules and no demo ids (make package)")
    p.add_argument("package", help="the staged package directory, e.g. build/lambda")
    p.set_defaults(func=cmd_check_package)

    p = sub.add_parser("run", help="run a task now (for the current slot, or --slot)")
    p.add_argument("task")
    p.add_argument("--account", action="append", help="limit to this account (repeatable)")
    p.add_argument("--region", action="append", help="limit to this region (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="record what would be done; change nothing")
    p.add_argument("--slot", help="run (again) the slot containing this UTC time, e.g. 2026-11-25T03:00Z")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "runs", help="recent runs, or `runs show RUN_ID`: its summary, then its units and actions page by page"
    )
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("run_id", nargs="?")
    p.add_argument(
        "--limit", type=_bounded("--limit", MAX_RUNS_LIMIT), default=20, help=f"runs to list (1..{MAX_RUNS_LIMIT})"
    )
    p.add_argument(
        "--page-size",
        type=_bounded("--page-size", MAX_PAGE_SIZE),
        default=DEFAULT_PAGE_SIZE,
        help=f"units or actions a page, for `runs show` (1..{MAX_PAGE_SIZE}; default {DEFAULT_PAGE_SIZE})",
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--units", action="store_true", help="`runs show`: only the units (with --next: the next page)")
    only.add_argument("--actions", action="store_true", help="`runs show`: only the actions")
    p.add_argument("--next", dest="token", metavar="TOKEN", help="continue a list where the printed token left it")
    p.add_argument("--all", action="store_true", help="`runs show`: every page (printed as it is read)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(
        "killswitch", help="flip | restore | status of kill switches; alarms: the member stacks' KillSwitchAlarmNames"
    )
    p.add_argument("action", choices=["flip", "restore", "status", "alarms"])
    p.add_argument("target", nargs="?", help="lambda:NAME, rule:NAME, esm:UUID, or an ARN")
    p.add_argument("--rules", default=os.environ.get("OPSBOT_RULES_DIR", str(DEFAULT_RULES_DIR)))
    p.add_argument("--account")
    p.add_argument("--region")
    p.add_argument("--reason", help="recorded with the switch")
    p.add_argument(
        "--force", action="store_true", help="restore even if the target changed since it was flipped (audited)"
    )
    p.set_defaults(func=cmd_killswitch)

    for name, text in (
        ("pause", "disable opsbot's own EventBridge rules (states recorded)"),
        ("resume", "put opsbot's rules back exactly as they were before pause"),
    ):
        p = sub.add_parser(name, help=text)
        if name == "resume":
            p.add_argument("--force", action="store_true", help="also what was changed while paused (audited)")
        p.set_defaults(func=cmd_pause, force=False)

    p = sub.add_parser("quotas", help="breach flags: `quotas check` (Lambda concurrency, service quotas) | runs")
    p.add_argument("action", choices=["check", "runs"])
    p.add_argument("--check", choices=["lambda-concurrency", "service-quotas"], help="only this check")
    p.add_argument("--account", action="append", help="limit to this account (repeatable)")
    p.add_argument("--region", action="append", help="limit to this region (repeatable)")
    p.add_argument(
        "--limit", type=_bounded("--limit", MAX_RUNS_LIMIT), default=20, help=f"runs to list (1..{MAX_RUNS_LIMIT})"
    )
    p.set_defaults(func=cmd_quotas)

    p = sub.add_parser("alerts", help="open breach alerts, or one by its id")
    p.add_argument("alert_id", nargs="?")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("sweep", help="close runs left RUNNING past their deadline; deliver pending announcements")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("local", help="the local embedded AWS: up | seed | slack | down")
    p.add_argument("action", choices=["up", "seed", "slack", "down"])
    p.add_argument("--port", type=int, default=4566)
    p.add_argument("--slack-port", type=int, default=4567)
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("demo", help="the whole local story on a fresh embedded AWS")
    p.add_argument("--port", type=int, default=0, help="moto port (0: pick a free one)")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except RulebookError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (subprocess.CalledProcessError, environment.LocalAwsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # an AWS error the commands do not handle themselves: one line, no traceback
        if (message := aws_error(exc)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    return result


def aws_error(exc: Exception) -> str | None:
    """What went wrong, for an operator, when the CLI cannot reach or use AWS (None: not such an error)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    if isinstance(exc, AccountAccessError):
        return f"the hub cannot act in {exc.account}/{exc.region}: {exc.code}: {exc.detail}"
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials: set AWS_PROFILE to the OperatorRole profile (docs: README, The CLI against AWS), "
            "or start the local AWS with `opsbot local up` and `opsbot local seed`"
        )
    if isinstance(exc, NoRegionError):
        return "no AWS region: set AWS_REGION (the hub's region)"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach {exc.kwargs.get('endpoint_url')}: is the local AWS up (`opsbot local up`)?"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, operation = err.get("Code", "ClientError"), getattr(exc, "operation_name", "?")
        hint = ""
        if code == "ResourceNotFoundException" and operation in ("GetItem", "PutItem", "Query", "UpdateItem"):
            hint = " (the ledger table is missing: deploy the stack, or locally run `opsbot local seed`)"
        return f"{operation}: {code}: {err.get('Message', '')}{hint}"
    if isinstance(exc, BotoCoreError):
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())

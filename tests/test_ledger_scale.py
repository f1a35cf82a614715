"""The ledger at organisation scale (issue 14, part 5), against moto: a run of thousands of units written in
batches and read back page by page (`opsbot runs show`), `recent_runs` paging past DynamoDB's 1 MB a Query
(moto cuts pages at 1 MB too), the limit cap, and open alerts read with one keyed Query, never a filter.

A run is written with UNITS units (3,000 by default: moto reads a whole partition for every page, so 17,000
units take about a minute here; OPSBOT_SCALE_UNITS=17000 runs the full 1,000 accounts x 17 regions)."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time

from automations.breach_checks.alerts import ALERTS_INDEX_KEY, OPEN, RESOLVED, AlertBook
from automations.breach_checks.kinds import Measurement
from automations.breach_checks.rules import Thresholds
from automations.core.clock import iso
from automations.core.ledger import (
    MAX_PAGE_SIZE,
    MAX_RUNS_LIMIT,
    PENDING_INDEX,
    Action,
    Ledger,
    LimitError,
    TokenError,
)
from opsbot.cli import main
from opsbot.runs_view import ACTIONS, UNITS, show_run, show_run_lines
from tests.conftest import ACCOUNT_A

UNITS_IN_RUN = int(os.environ.get("OPSBOT_SCALE_UNITS", "3000"))
REGIONS_PER_ACCOUNT = 17
RUN_ID = "snapshot-daily-20261125T0300Z-scale"


def calls(ledger: Ledger, operation: str) -> list[dict[str, Any]]:
    """The parameters of every ``operation`` call the ledger's client makes from now on (as sent)."""
    seen: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        seen.append(dict(params))

    ledger.table.meta.client.meta.events.register(f"provide-client-params.dynamodb.{operation}", hook)
    return seen


def fleet_units(n: int) -> Iterator[tuple[str, str]]:
    for i in range(n):
        yield f"{100000000000 + i // REGIONS_PER_ACCOUNT:012d}", f"region-{i % REGIONS_PER_ACCOUNT:02d}"


def status_of(i: int) -> str:
    return "FAILED" if i % 97 == 0 else "PARTIAL" if i % 89 == 0 else "SUCCEEDED"


def write_run(ledger: Ledger, run_id: str, units: int, actions: int) -> None:
    """A closed run with ``units`` units (written with unit_writer) and ``actions`` actions."""
    ledger.open_run(run_id, ledger.clock() + timedelta(hours=1), task="snapshot-daily", trigger={"type": "schedule"})
    by_status: Counter[str] = Counter()
    with ledger.unit_writer(run_id) as write:
        for i, (account, region) in enumerate(fleet_units(units)):
            write(account, region, status=status_of(i), counts={"created": 1}, error=None)
            by_status[status_of(i).lower()] += 1
    with ledger.action_recorder(run_id) as record:
        for i, (account, region) in enumerate(fleet_units(actions)):
            record(Action(account, region, f"vol-{i:08x}", "create-snapshot", "created", created_ids=[f"snap-{i}"]))
    failures = [f"{a}/{r}: boom" for i, (a, r) in enumerate(fleet_units(units)) if status_of(i) == "FAILED"]
    ledger.close_run(
        run_id, "PARTIAL", units={"total": units, **by_status}, counts={"created": actions}, failures=failures[:5]
    )


# ---- batched writes ------------------------------------------------------------------------------
def test_unit_writer_is_one_batch_write_per_25_units(ledger: Ledger) -> None:
    ledger = Ledger(ledger.table, clock=lambda: datetime(2026, 11, 25, 3, tzinfo=UTC))
    batches, puts = calls(ledger, "BatchWriteItem"), calls(ledger, "PutItem")
    with ledger.unit_writer("run-1") as write:
        for account, region in fleet_units(60):
            write(account, region, status="SUCCEEDED", counts={"created": 2}, seconds=1.5, error=None)
        write("100000000000", "region-00", status="FAILED", error="AccessDenied")  # rewritten in the block
    assert [len(b["RequestItems"][ledger.table.name]) for b in batches] == [25, 25, 11]
    assert puts == []
    units = {(u["account"], u["region"]): u for u in ledger.units("run-1")}
    assert len(units) == 60
    assert units["100000000000", "region-00"]["status"] == "FAILED"  # the last write of a unit wins
    sample = units["100000000001", "region-02"]
    assert sample["counts"] == {"created": 2} and sample["seconds"] == 1.5 and "error" not in sample
    assert sample["run_id"] == "run-1" and sample["expires_at"] > 0 and sample["recorded_at"]
    # Stored exactly as record_unit stores a unit (one shape for both writers).
    ledger.record_unit("run-2", "100000000001", "region-02", status="SUCCEEDED", counts={"created": 2}, seconds=1.5)
    (single,) = ledger.units("run-2")
    assert {k: v for k, v in single.items() if k not in ("pk", "run_id")} == {
        k: v for k, v in sample.items() if k not in ("pk", "run_id")
    }


# ---- runs show, page by page ----------------------------------------------------------------------
def test_runs_show_pages_through_a_big_run_every_unit_exactly_once(ledger: Ledger) -> None:
    page_size = min(-(-UNITS_IN_RUN // 10), MAX_PAGE_SIZE)
    pages_expected = -(-UNITS_IN_RUN // page_size)
    write_run(ledger, RUN_ID, UNITS_IN_RUN, page_size + 100)
    text = show_run(ledger, RUN_ID, page_size=page_size)
    lines = text.splitlines()
    assert len(lines) < 2 * page_size + 60  # one page of units and one of actions, not the whole run
    failed = sum(1 for i in range(UNITS_IN_RUN) if status_of(i) == "FAILED")
    assert f"units: {UNITS_IN_RUN} (" in text and f"failed {failed}" in text  # from the run record
    assert "failures:" in text and "100000000000/region-00: boom" in text
    more_units = [line for line in lines if line.startswith("more: ") and "--units" in line]
    more_actions = [line for line in lines if line.startswith("more: ") and "--actions" in line]
    assert len(more_units) == len(more_actions) == 1
    assert more_units[0].startswith(f"more: opsbot runs show {RUN_ID} --page-size {page_size} --units --next ")

    # Follow the printed tokens, as an operator would: every unit exactly once, across all pages.
    queries = calls(ledger, "Query")
    seen: Counter[tuple[str, str]] = Counter(_unit_rows(text.split("more: ")[0]))
    token: str | None = more_units[0].rsplit(" ", 1)[1]
    pages = 1
    while token:
        page = "\n".join(show_run_lines(ledger, RUN_ID, section=UNITS, page_size=page_size, token=token))
        seen.update(_unit_rows(page))
        found = re.search(r"^more: .* --units --next (\S+)$", page, re.M)
        token = found.group(1) if found else None
        pages += 1
    assert seen == Counter(fleet_units(UNITS_IN_RUN))
    assert pages == pages_expected
    units = [q for q in queries if "IndexName" not in q and "Limit" in q]
    assert len(units) == pages_expected - 1  # one Query a page (the run's own record is a GetItem)
    for q in units:  # keyed, bounded: never a scan, never a filter
        assert q["Limit"] == page_size + 1 and "FilterExpression" not in q


def test_unit_pages_and_the_all_flag(ledger: Ledger) -> None:
    write_run(ledger, "run-small", 130, 70)
    pages = list(ledger.unit_pages("run-small", 25))
    assert [len(p.items) for p in pages] == [25, 25, 25, 25, 25, 5]
    assert pages[-1].next_token is None and all(p.next_token for p in pages[:-1])
    assert Counter((u["account"], u["region"]) for p in pages for u in p.items) == Counter(fleet_units(130))
    assert ledger.unit_page("run-small", 25, pages[2].next_token).items == pages[3].items  # resumes exactly
    last = ledger.unit_page("run-small", 130)  # a page that ends the list exactly: no empty page after it
    assert len(last.items) == 130 and last.next_token is None

    blocks = show_run_lines(ledger, "run-small", section=UNITS, page_size=40, all_pages=True)
    first = next(blocks)  # printed before the next page is read
    assert first.splitlines()[0].split() == ["ACCOUNT", "REGION", "STATUS", "COUNTS", "ERROR"]
    rest = list(blocks)
    assert len(rest) == 3 and not any(b.startswith("more: ") for b in [first, *rest])
    assert Counter(_unit_rows("\n".join([first, *rest]))) == Counter(fleet_units(130))
    actions = "\n".join(show_run_lines(ledger, "run-small", section=ACTIONS, page_size=30, all_pages=True))
    assert len(re.findall(r"create-snapshot\s+created", actions)) == 70
    whole = show_run(ledger, "run-small", page_size=40, all_pages=True)
    assert len(_unit_rows(whole.split("RESOURCE")[0])) == 130 and "more: " not in whole


def test_a_running_run_counts_its_units_from_the_units(ledger: Ledger) -> None:
    ledger.open_run("run-open", ledger.clock() + timedelta(hours=1), task="t", trigger={"type": "cli"})
    with ledger.unit_writer("run-open") as write:
        for i, (account, region) in enumerate(fleet_units(40)):
            write(account, region, status="RUNNING" if i % 4 else "SUCCEEDED")
    assert ledger.unit_counts("run-open") == {"running": 30, "succeeded": 10}
    assert "units recorded so far: 40 (running 30, succeeded 10)" in show_run(ledger, "run-open")


def test_tokens_and_page_sizes_are_checked(ledger: Ledger) -> None:
    write_run(ledger, RUN_ID, 30, 0)
    page = ledger.unit_page(RUN_ID, 10)
    assert page.next_token
    with pytest.raises(TokenError, match="does not continue the actions"):
        ledger.action_page(RUN_ID, 10, page.next_token)  # a units token for the actions
    with pytest.raises(TokenError, match="does not continue the units of run other"):
        ledger.unit_page("other", 10, page.next_token)  # another run's
    with pytest.raises(TokenError, match="not a continuation token"):
        ledger.unit_page(RUN_ID, 10, "not-a-token!")
    for size in (0, MAX_PAGE_SIZE + 1):
        with pytest.raises(LimitError, match="page size must be between 1 and"):
            ledger.unit_page(RUN_ID, size)


# ---- recent runs past 1 MB -----------------------------------------------------------------------
def _many_big_runs(ledger: Ledger, n: int) -> list[str]:
    """``n`` closed runs of about 20 KB each (so a Query page of the by-time index stops at ~48 runs)."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    ids = []
    with ledger.table.batch_writer() as batch:
        for i in range(n):
            run_id, at = f"run-{i:04d}", iso(start + timedelta(minutes=i))
            batch.put_item(
                Item={
                    "pk": f"RUN#{run_id}",
                    "sk": "RUN",
                    "run_id": run_id,
                    "task": "snapshot-daily",
                    "status": "SUCCEEDED",
                    "started_at": at,
                    "ended_at": at,
                    "gsi1pk": "RUN",
                    "gsi1sk": f"{at}#{run_id}",
                    "failures": ["x" * 1000] * 20,
                }
            )
            ids.append(run_id)
    return ids[::-1]  # newest first


def test_recent_runs_pages_past_one_megabyte_to_exactly_limit(ledger: Ledger) -> None:
    newest_first = _many_big_runs(ledger, 130)
    queries = calls(ledger, "Query")
    runs = ledger.recent_runs(110)
    assert [r["run_id"] for r in runs] == newest_first[:110]  # exactly limit, newest first, none twice
    assert len(queries) >= 3  # 2.6 MB: DynamoDB (and moto) stop a page at 1 MB
    assert queries[0]["Limit"] == 110 and all("FilterExpression" not in q for q in queries)
    assert [r["run_id"] for r in ledger.recent_runs(MAX_RUNS_LIMIT)] == newest_first  # fewer exist: all
    assert [r["run_id"] for r in ledger.recent_runs(1)] == newest_first[:1]


def test_the_limit_is_capped(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (0, -1, MAX_RUNS_LIMIT + 1):
        with pytest.raises(LimitError, match=f"limit must be between 1 and {MAX_RUNS_LIMIT}"):
            ledger.recent_runs(bad)
    for argv in (["runs", "--limit", "5000"], ["runs", "--limit", "0"], ["runs", "show", "x", "--page-size", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "must be between 1 and" in err and "Traceback" not in err
    assert main(["runs", "show", "x", "--next", "abc"]) == 2  # a token continues one named list
    assert "add --units or --actions" in capsys.readouterr().err


@pytest.fixture
def operator_env(hub_session: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "fleet.yaml").write_text(
        f'role_prefix: opsbot\nexternal_id: opsbot-test\ndefault_regions: [us-east-1]\naccounts:\n  - {{id: "{ACCOUNT_A}"}}\n'
    )
    (rules / "tasks.yaml").write_text("tasks: []\n")
    monkeypatch.setenv("OPSBOT_RULES_DIR", str(rules))
    monkeypatch.setenv("OPSBOT_LEDGER_TABLE", "opsbot-ledger")


def test_cli_runs_and_runs_show(operator_env: None, ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    newest_first = _many_big_runs(ledger, 60)
    assert main(["runs", "--limit", "55"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("run-")]
    assert listed == newest_first[:55]

    with ledger.unit_writer("run-0001") as write:
        for account, region in fleet_units(30):
            write(account, region, status="SUCCEEDED")
    assert main(["runs", "show", "run-0001", "--page-size", "20"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"--units --next (\S+)$", out, re.M)
    assert token and len(_unit_rows(out)) == 20
    assert main(["runs", "show", "run-0001", "--units", "--next", token.group(1), "--page-size", "20"]) == 0
    assert len(_unit_rows(capsys.readouterr().out)) == 10
    assert main(["runs", "show", "run-0001", "--actions", "--next", token.group(1)]) == 2
    assert "does not continue the actions of run run-0001" in capsys.readouterr().err
    assert main(["runs", "show", "no-such-run"]) == 2


def _unit_rows(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^(\d{12})\s+(region-\d\d)\s", text, re.M)]


# ---- open alerts: one keyed Query of the open ones ------------------------------------------------
T = Thresholds(warn_percent=80, critical_percent=95, hysteresis_percent=5, reminder_hours=6)


def quota(key: str, percent: float) -> Measurement:
    return Measurement(
        check="service-quotas",
        key=key,
        name=key,
        service="ec2",
        quota_code=key,
        usage=percent,
        limit=100,
        window="over the last 60 min",
    )


def observe(book: AlertBook, key: str, percent: float) -> None:
    book.observe(ACCOUNT_A, "us-east-1", quota(key, percent), T, book.state(ACCOUNT_A, "us-east-1", key))


def test_open_alerts_is_a_keyed_query_of_open_alerts_only(book: AlertBook, ledger: Ledger) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        for i in range(60):  # 60 alerts opened, 50 of them resolved again
            observe(book, f"q-{i:03d}", 90)
            clock.tick(1)
        for i in range(50):
            observe(book, f"q-{i:03d}", 10)
    queries = calls(ledger, "Query")
    found = book.open_alerts()
    assert sorted(a["key"] for a in found) == [f"q-{i:03d}" for i in range(50, 60)]
    assert all(a["status"] == OPEN for a in found)
    assert [a["alert_id"] for a in found] == sorted((a["alert_id"] for a in found), reverse=True)  # newest first
    (query,) = queries  # one Query, of the open ones only: no partition read through a filter
    assert query["IndexName"] == PENDING_INDEX and "FilterExpression" not in query
    resolved = book.state(ACCOUNT_A, "us-east-1", "q-000")
    assert resolved is not None and resolved["status"] == RESOLVED and "pending_pk" not in resolved
    assert book.get(resolved["alert_id"]) is not None  # still found by its id (by-time index)


def _legacy_open_alert(book: AlertBook, key: str) -> dict[str, Any]:
    """An open alert as written before open alerts had their own keys: no pending_pk / pending_sk."""
    observe(book, key, 90)
    item = book.table.get_item(Key={"pk": book.pk(ACCOUNT_A, "us-east-1"), "sk": f"KEY#{key}"})["Item"]
    for name in ("pending_pk", "pending_sk"):
        item.pop(name)
    book.table.put_item(Item=item)
    return item


def test_an_open_alert_written_before_the_change_is_rekeyed_by_its_next_write(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        legacy = _legacy_open_alert(book, "q-old")
        assert legacy["gsi1pk"] == ALERTS_INDEX_KEY and book.open_alerts() == []
        clock.tick(300)
        observe(book, "q-old", 91)  # the next check of its account/region (a steady reading)
        (found,) = book.open_alerts()
        assert found["alert_id"] == legacy["alert_id"] and found["version"] == legacy["version"] + 1
        clock.tick(300)
        observe(book, "q-old", 10)  # resolved: out of the open list
        assert book.open_alerts() == []


def test_rekey_open_alerts_migrates_old_open_alerts_at_once(book: AlertBook) -> None:
    with freeze_time("2026-11-25 10:00:00") as clock:
        old = [_legacy_open_alert(book, f"q-{i}") for i in range(3)]
        clock.tick(60)
        observe(book, "q-new", 90)  # written with its keys already
        observe(book, "q-gone", 90)
        observe(book, "q-gone", 10)  # resolved: stays out
        assert [a["key"] for a in book.open_alerts()] == ["q-new"]
        assert book.rekey_open_alerts() == 3
        assert sorted(a["alert_id"] for a in book.open_alerts()) == sorted(
            [*(o["alert_id"] for o in old), book.state(ACCOUNT_A, "us-east-1", "q-new")["alert_id"]]
        )
        assert book.rekey_open_alerts() == 0  # again: nothing left to do
        assert book.state(ACCOUNT_A, "us-east-1", "q-0")["version"] == old[0]["version"]  # no new version

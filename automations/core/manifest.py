"""A run's unit manifest in S3, and the results its Distributed Map leaves there.

Plan writes the units of a run to ``<prefix>/<run_id>/units.json`` (a JSON array of
``{"account", "region", "primary", "account_name"}``) and hands the state machine only a reference to it: the
Distributed Map reads the items from S3 (ItemReader) and adds what every unit shares (run, job, slot)
with its ItemSelector, so neither the state payload, the execution history nor Plan's idempotency record
grows with the fleet. The Map's ResultWriter leaves ``<prefix>/<run_id>/results/<map run>/manifest.json``
naming its SUCCEEDED / FAILED / PENDING files; Close reads the FAILED ones to say why a unit left no
ledger record. Locally, the thread-pool runner reads the same units.json and writes the same result
layout (``write_results``), so Close runs the same code everywhere.

Order: units are interleaved across accounts (every account's first region, then every account's second
region, ...), so the units the Map runs at once are spread over as many accounts as possible: a run of
1,000 accounts at MaxConcurrency 100 has about one unit per account in flight (``caps.py`` makes it a
hard limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from automations.core.boundary import ACCOUNT_ID, REGION, InputError, mapping, text

# What a run's units.json may hold: 1,000 accounts x 17 regions is about 1.3 MB; far above is a mistake
# (and would not fit a 256 MB Lambda once parsed).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# How much of the Map's results Close reads to say why children failed (they only explain; see close()).
MAX_RESULTS_BYTES = 16 * 1024 * 1024
# How much of one failed child's error Close keeps (the run record lists at most 100 failures anyway).
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class ManifestRef:
    """Where a run's units are: what the run record and the state payload carry instead of the units."""

    bucket: str
    key: str
    units: int
    bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "units": self.units, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ManifestRef:
        data = mapping(data, source, "manifest")
        units, size = data.get("units"), data.get("bytes")
        return cls(
            bucket=text(data.get("bucket"), source, "manifest.bucket"),
            key=text(data.get("key"), source, "manifest.key"),
            units=int(units) if isinstance(units, int | float) else 0,
            bytes=int(size) if isinstance(size, int | float) else 0,
        )


def interleave(targets: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(account, region) pairs reordered round-robin over accounts, each account's regions in order."""
    by_account: dict[str, list[str]] = {}
    for account, region in targets:
        by_account.setdefault(account, []).append(region)
    rounds = max((len(r) for r in by_account.values()), default=0)
    return [(a, regions[i]) for i in range(rounds) for a, regions in by_account.items() if i < len(regions)]


@dataclass(frozen=True)
class ManifestStore:
    """Reads and writes manifests and results in one bucket (the hub's ManifestBucket)."""

    s3: Any  # boto3 S3 client
    bucket: str
    prefix: str = "runs"

    def key(self, run_id: str) -> str:
        return f"{self.prefix}/{run_id}/units.json"

    def results_prefix(self, run_id: str) -> str:
        return f"{self.prefix}/{run_id}/results"

    def write(self, run_id: str, items: list[dict[str, Any]]) -> ManifestRef:
        """Put the manifest. A retry puts the same key again (PutObject replaces it whole): idempotent."""
        body = json.dumps(items, separators=(",", ":")).encode()
        key = self.key(run_id)
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        return ManifestRef(self.bucket, key, len(items), len(body))

    def read(self, ref: ManifestRef, source: str) -> list[dict[str, Any]]:
        """The manifest's items, each checked: a manifest that is not what Plan wrote is an InputError."""
        if ref.bucket != self.bucket:
            raise InputError(source, "manifest.bucket", f"{ref.bucket!r} is not opsbot's bucket {self.bucket!r}")
        obj = self.s3.get_object(Bucket=ref.bucket, Key=ref.key)
        if int(obj.get("ContentLength") or 0) > MAX_MANIFEST_BYTES:
            raise InputError(source, "manifest", f"{ref.key} is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            items = json.loads(obj["Body"].read())
        except ValueError as exc:
            raise InputError(source, "manifest", f"{ref.key} is not JSON: {exc}") from None
        if not isinstance(items, list):
            raise InputError(source, "manifest", f"{ref.key} is not a JSON array")
        for i, item in enumerate(items):
            item = mapping(item, source, f"manifest[{i}]")
            text(item.get("account"), source, f"manifest[{i}].account", pattern=ACCOUNT_ID)
            text(item.get("region"), source, f"manifest[{i}].region", pattern=REGION)
        return items

    # ---- results, in the layout of the Distributed Map's ResultWriter ---------------------------------
    def write_results(self, run_id: str, failed: list[dict[str, Any]]) -> dict[str, str]:
        """The local runner's stand-in for ResultWriter: ``failed`` are child results
        (``{"Input": <json text>, "Status": "FAILED", "Error", "Cause"}``). Returns ResultWriterDetails."""
        base = f"{self.results_prefix(run_id)}/local"
        files: dict[str, list[dict[str, Any]]] = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        if failed:
            key = f"{base}/FAILED_0.json"
            body = json.dumps(failed).encode()
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
            files["FAILED"].append({"Key": key, "Size": len(body)})
        manifest = {"DestinationBucket": self.bucket, "MapRunArn": f"local:{run_id}", "ResultFiles": files}
        key = f"{base}/manifest.json"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(manifest).encode())
        return {"Bucket": self.bucket, "Key": key}

    def failed_units(self, details: Mapping[str, Any] | None, source: str) -> dict[str, str]:
        """ "account/region" -> why, for every child the Map reports FAILED (a batch's error goes to each of
        its units). ``details`` is the Map's ResultWriterDetails ({"Bucket", "Key"}); None: no results."""
        if not details:
            return {}
        details = mapping(details, source, "results")
        bucket = text(details.get("Bucket"), source, "results.Bucket")
        if bucket != self.bucket:
            raise InputError(source, "results.Bucket", f"{bucket!r} is not opsbot's bucket {self.bucket!r}")
        manifest = self._json(bucket, text(details.get("Key"), source, "results.Key"), source)
        files = mapping(manifest, source, "results manifest").get("ResultFiles") or {}
        failed: dict[str, str] = {}
        budget = MAX_RESULTS_BYTES
        for entry in (files.get("FAILED") or []) if isinstance(files, Mapping) else []:
            key = entry.get("Key") if isinstance(entry, Mapping) else None
            size = entry.get("Size") if isinstance(entry, Mapping) else None
            if not isinstance(key, str):
                continue
            budget -= size if isinstance(size, int) else MAX_RESULTS_BYTES
            if budget < 0:  # enough to explain the failures a run record lists (100); the ledger has the rest
                break
            results = self._json(bucket, key, source)
            for result in results if isinstance(results, list) else []:
                if isinstance(result, Mapping):
                    why = f"{result.get('Error') or 'failed'}: {result.get('Cause') or ''}".strip(": ")
                    for unit in _units_of(result.get("Input")):
                        failed[unit] = why[:MAX_ERROR_CHARS]
        return failed

    def _json(self, bucket: str, key: str, source: str) -> Any:
        try:
            return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ValueError as exc:
            raise InputError(source, "results", f"{key} is not JSON: {exc}") from None


def _units_of(child_input: Any) -> list[str]:
    """The "account/region" units of one child's input: a unit, or a batch ``{"Items": [...]}``."""
    try:
        value = json.loads(child_input) if isinstance(child_input, str) else child_input
    except ValueError:
        return []
    if not isinstance(value, Mapping):
        return []
    batch = value.get("Items")
    items: list[Any] = batch if isinstance(batch, list) else [value]
    return [
        f"{i['account']}/{i['region']}"
        for i in items
        if isinstance(i, Mapping) and isinstance(i.get("account"), str) and isinstance(i.get("region"), str)
    ]

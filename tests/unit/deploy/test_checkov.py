"""checkov's security policies pass on deploy/k8s/ and deploy/api/Dockerfile, and every check
skipped carries its reason inline (a `checkov.io/skipN: CKV_...=reason` annotation).

checkov lives in its own venv (`make checkov-venv`: it would downgrade packages of the main
one). Without it this test skips, but fails under CI=true. It runs once for both frameworks
(it takes seconds to start), offline (--skip-download)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy.manifests import DOCKERFILE, REPO, k8s_objects, need_tool

FRAMEWORKS = ("kubernetes", "dockerfile")
SKIP_ANNOTATION = "checkov.io/skip"


def checkov_path() -> Path:
    venv = Path(os.environ.get("CHECKOV_VENV", REPO / ".venv-checkov"))
    return venv / "bin" / "checkov"


@pytest.fixture(scope="module")
def reports() -> dict[str, dict[str, Any]]:
    """checkov's JSON report per framework, for deploy/ (the manifests and the Dockerfile)."""
    checkov = need_tool(checkov_path(), "checkov", "checkov-venv")
    run = subprocess.run(
        [checkov, "--directory", "deploy", "--framework", *FRAMEWORKS, "--output", "json",
         "--compact", "--skip-download"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # 0: no failed check, 1: some failed; both print the report.
    assert run.returncode in (0, 1), run.stderr[-2000:]
    parsed = json.loads(run.stdout)
    found = parsed if isinstance(parsed, list) else [parsed]
    return {report["check_type"]: report for report in found}


def test_every_manifest_and_the_dockerfile_were_scanned(reports: dict[str, Any]) -> None:
    assert set(reports) == set(FRAMEWORKS)
    kubernetes = reports["kubernetes"]["summary"]
    assert kubernetes["parsing_errors"] == 0
    # Every object was read: a file checkov cannot parse silently drops out of the count.
    assert kubernetes["resource_count"] >= len(k8s_objects())
    dockerfile = reports["dockerfile"]["summary"]
    assert dockerfile["resource_count"] == 1
    assert dockerfile["parsing_errors"] == 0
    files = {r["file_path"] for r in reports["dockerfile"]["results"]["passed_checks"]}
    assert files == {"/" + str(DOCKERFILE.relative_to(REPO / "deploy"))}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_check_fails(reports: dict[str, Any], framework: str) -> None:
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})"
        for c in reports[framework]["results"]["failed_checks"]
    ]
    assert failed == []


def test_every_skipped_check_is_justified_inline(reports: dict[str, Any]) -> None:
    skipped = [c for r in reports.values() for c in r["results"]["skipped_checks"]]
    for check in skipped:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason.split()) >= 5, f"{check['check_id']} on {check['resource']}: {reason!r}"
    # ... and every skip annotation in the manifests skips a check that ran.
    annotated = [
        value
        for _, body in k8s_objects()
        for key, value in body["metadata"].get("annotations", {}).items()
        if key.startswith(SKIP_ANNOTATION)
    ]
    assert len(annotated) == len(skipped)

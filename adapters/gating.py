"""Eval-gated alias flips: the verdict of a suite run on a candidate version, and the refusal
when one of its gates fails. The suite runner lives in `evaluation`, a layer above: the
command tree's root (cli/main.py) and `ragtune serve` pass it in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.registry import AdapterRecord, Registry
from ragtune.errors import GateFailed
from ragtune.settings import Settings


@dataclass(frozen=True)
class GateVerdict:
    """What a suite said about a candidate version: its name, the gates that failed (each as a
    sentence; none when it passed) and the summary kept on the version's record."""

    suite: str
    failing: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failing

    @property
    def key(self) -> str:
        """The key of the summary among the version's evaluation results."""
        return f"suite:{self.suite}"

    def describe(self) -> str:
        if self.passed:
            return f"suite {self.suite!r}: every gate holds"
        return f"suite {self.suite!r} failed: {'; '.join(self.failing)}"


# Runs a suite on `ref` served in place of `alias`, in this process (`ragtune adapters alias
# --require-suite`): (settings, suite file, alias, ref) -> verdict.
CliGate = Callable[[Settings, Path, str, str], GateVerdict]


def record_verdict(registry: Registry, ref: str, verdict: GateVerdict) -> AdapterRecord:
    """Keep the suite's summary on the version's record, whatever it said."""
    return registry.attach_eval(ref, verdict.key, verdict.summary)


def refuse_unless_passed(verdict: GateVerdict, alias: str, ref: str) -> None:
    """Raise GateFailed, naming the failing gates, unless every gate held."""
    if not verdict.passed:
        raise GateFailed(
            f"alias {alias!r} was not moved to {ref}: {verdict.describe()}; the summary is on "
            f"{ref}'s record (evals[{verdict.key!r}]); improve the version or the suite's gates "
            f"and try again"
        )

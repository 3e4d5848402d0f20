"""Eval-gated alias flips: run a suite with a candidate version served in its alias's place,
and say whether every gate holds. `ragtune serve` gives `service_gate` to the admin API (the
suite runs on the server's own services); `ragtune adapters alias --require-suite` runs
`gate_in_process` on the app's services built in the command's process."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapters.gating import GateVerdict
from evaluation.runner import RunOptions, run_suite, suite_name
from evaluation.suite import Suite, load_suite
from evaluation.targets import InProcessTarget
from ragtune.errors import InvalidInput
from ragtune.settings import Settings


class ServiceTarget(InProcessTarget):
    """A running app's services (AppState, or the admin API's GateServices) as a target, with
    `candidates` (alias -> held version) answering in their aliases' places. It starts and
    closes nothing: the services are their app's."""

    def __init__(self, services: Any, candidates: Mapping[str, str]) -> None:
        super().__init__(services.settings, candidates=candidates)
        self._state = services

    async def start(self) -> None:
        return None


def candidate_strategies(suite: Suite, routes: Mapping[str, Any], alias: str) -> list[str]:
    """The suite's strategies `alias` answers: those naming it, and those on a route whose
    own adapter it is."""
    names = []
    for strategy in suite.strategies:
        spec = routes.get(strategy.route)
        asked = strategy.adapter or (spec.adapter if spec is not None else None)
        if asked == alias:
            names.append(strategy.name)
    return names


def failing_gates(summary: dict[str, Any]) -> list[str]:
    """Each failing gate as a sentence: strategy, metric, value and the bound it missed."""
    failing = []
    for gate in summary["gates"]:
        if not gate["passed"]:
            side = "below" if gate["value"] < gate["bound"] else "above"
            failing.append(
                f"gate {gate['strategy']}.{gate['metric']}: {gate['value']:.4g} is {side} "
                f"its bound {gate['bound']:.4g}"
            )
    return failing


async def measure(
    suite: Suite, services: Any, alias: str, ref: str, *, limit: int | None = None
) -> GateVerdict:
    """Run `suite` (its first `limit` cases) on `services` with `ref` (held loaded meanwhile)
    answering for `alias`."""
    where = f"suite {suite.path}"
    uses = candidate_strategies(suite, services.routes, alias)
    if not uses:
        raise InvalidInput(
            f"{where}: no strategy is answered by alias {alias!r} (set `adapter: {alias}` on "
            f"one, or use a route whose adapter it is), so it cannot judge {ref}"
        )
    if not any(
        g.strategy in uses or (g.max_ratio_of or g.min_ratio_of) in uses for g in suite.gates
    ):
        raise InvalidInput(
            f"{where}: no gate concerns a strategy alias {alias!r} answers "
            f"({', '.join(uses)}); add one, e.g. {{strategy: {uses[0]}, metric: pass_rate, "
            f"min: 0.9}}"
        )
    target = ServiceTarget(services, {alias: ref})
    # The cache as `ragtune eval run` keeps it: its key holds the adapter version that answers,
    # so the candidate's cases always run, and the strategies it does not answer (the baselines
    # a gate compares with) run once for a whole sweep instead of once per version.
    async with services.adapters.hold(ref):
        options = RunOptions(use_cache=True, progress=False, limit=limit)
        outcome = await run_suite(suite, services.settings, options, target=target)
    if outcome.interrupted:
        raise asyncio.CancelledError
    answered: dict[str, set[str | None]] = {name: set() for name in uses}
    for result in outcome.results:
        if result.strategy in answered and result.output is not None:
            answered[result.strategy].add(result.output.adapter)
    summary = dict(outcome.summary)
    summary["candidate"] = {
        "alias": alias,
        "ref": ref,
        "answered_by": {
            name: sorted(v or "base" for v in versions) for name, versions in answered.items()
        },
    }
    return GateVerdict(suite_name(suite), failing_gates(summary), summary)


async def service_gate(suite: Path, alias: str, ref: str, services: Any) -> GateVerdict:
    """The admin API's SuiteGate: the suite on the server's own running services."""
    loaded = await asyncio.to_thread(load_suite, suite)
    return await measure(loaded, services, alias, ref)


def gate_in_process(
    settings: Settings, suite: Path, alias: str, ref: str, backends: Any = None
) -> GateVerdict:
    """The CLI's gate: builds the app's services in this process (as `ragtune eval run` does),
    runs the suite with `ref` answering for `alias`, and closes them."""
    loaded = load_suite(suite)  # a bad suite stops before the model loads

    async def run() -> GateVerdict:
        target = InProcessTarget(settings, backends)
        try:
            await target.start()
            return await measure(loaded, target.services, alias, ref)
        finally:
            await target.aclose()

    return asyncio.run(run())

"""Scoring adapter versions with an eval suite without moving any alias: the app's services are
built once in this process, and each version is held and answers in its alias's place while
the suite runs (evaluation.promotion's measure, as a gated flip does)."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from adapters.gating import GateVerdict
from evaluation.promotion import candidate_strategies, measure
from evaluation.suite import GATE_METRICS, Suite
from evaluation.summary import metric_value
from evaluation.targets import InProcessTarget
from ragtune.errors import InvalidInput
from ragtune.settings import Settings

if TYPE_CHECKING:
    from service.app import BackendFactory

# Metrics where more is better (a sweep maximises its metric): the pass rate and the suite's
# own assertion metrics (each a weighted score in [0, 1]).
_NOT_QUALITY = GATE_METRICS - {"pass_rate"}


def judged_strategy(
    suite: Suite, routes: Mapping[str, Any], alias: str, strategy: str | None, metric: str
) -> str:
    """The suite strategy whose `metric` measures `alias` (the one named, else the first the
    alias answers); refuse a suite that could not judge it."""
    answered = candidate_strategies(suite, routes, alias)
    if not answered:
        raise InvalidInput(
            f"suite {suite.path}: no strategy is answered by alias {alias!r}; set `adapter: "
            f"{alias}` on one, or use a route whose adapter it is"
        )
    chosen = strategy or answered[0]
    if chosen not in answered:
        suite.strategy(chosen)  # an unknown name: a SuiteError listing the strategies
        raise InvalidInput(
            f"strategy {chosen!r} of suite {suite.path} is not answered by alias {alias!r}; "
            f"those it answers: {', '.join(answered)}"
        )
    if not any(
        g.strategy in answered or (g.max_ratio_of or g.min_ratio_of) in answered
        for g in suite.gates
    ):
        raise InvalidInput(
            f"suite {suite.path}: no gate concerns a strategy alias {alias!r} answers "
            f"({', '.join(answered)}), so no run could earn the alias; add one, e.g. "
            f"{{strategy: {chosen}, metric: pass_rate, min: 0.9}}"
        )
    known = {"pass_rate"} | (suite.metrics() - _NOT_QUALITY)
    if metric not in known:
        raise InvalidInput(
            f"metric {metric!r}: a sweep maximises pass_rate or one of the suite's assertion "
            f"metrics ({', '.join(sorted(known))})"
        )
    return chosen


def quality(verdict: GateVerdict, strategy: str, metric: str) -> float | None:
    """The strategy's `metric` in the verdict's summary (None if it reported none)."""
    figures = verdict.summary["strategies"].get(strategy)
    return None if figures is None else metric_value(figures, metric)


class Scorer:
    """The app's services for a sequence of scorings; `async with` starts and closes them."""

    def __init__(self, settings: Settings, backends: BackendFactory | None = None) -> None:
        self._target = InProcessTarget(settings, backends)

    async def __aenter__(self) -> Scorer:
        try:
            await self._target.start()
        except BaseException:
            await self._target.aclose()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._target.aclose()

    async def score(
        self, suite: Suite, alias: str, ref: str, *, limit: int | None = None
    ) -> GateVerdict:
        """The suite (its first `limit` cases) run with `ref` answering for `alias`; the alias
        itself is untouched."""
        return await measure(suite, self._target.services, alias, ref, limit=limit)

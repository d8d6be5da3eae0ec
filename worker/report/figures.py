"""What ``tailor report`` knows, read from Prometheus: live quality by variant, where the
hits came from, and bias, for one window and the window before it.

The counts are the workers' live prequential counters (:mod:`worker.quality.live`): the
same definition as ``tailor evaluate``, so "HR@20 this week" here and an offline replay
of the same week read alike. Ratios are taken of sums over the window (never an average
of per-worker ratios), so a worker with few users weighs what its users weigh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from worker.report.prometheus import PrometheusApi

__all__ = [
    "BiasFigures",
    "Comparison",
    "LiveFigures",
    "VariantQuality",
    "compare",
    "read_live_figures",
]

#: The variant a list carries when its user is in no experiment (worker.config).
CONTROL = "control"
#: p-value under which a difference in HR@20 is called a lead rather than noise.
SIGNIFICANCE = 0.05
#: Points on the report's curves over the window.
CURVE_POINTS = 48


@dataclass(slots=True)
class VariantQuality:
    """One variant's live counts over the window and over the window before it."""

    variant: str
    scored: float = 0.0
    hits: float = 0.0  # at 20
    reciprocal_ranks: float = 0.0
    before_scored: float = 0.0
    before_hits: float = 0.0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.scored if self.scored else math.nan

    @property
    def mrr(self) -> float:
        return self.reciprocal_ranks / self.scored if self.scored else math.nan

    @property
    def before_hit_rate(self) -> float:
        return self.before_hits / self.before_scored if self.before_scored else math.nan

    @property
    def change(self) -> float:
        """Relative change of HR@20 against the window before (NaN when either is empty)."""
        before = self.before_hit_rate
        return self.hit_rate / before - 1.0 if before and not math.isnan(before) else math.nan


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant's HR@20 against control's: relative lift and a two-proportion z-test."""

    variant: str
    lift: float
    z: float
    p_value: float

    @property
    def verdict(self) -> str:
        if math.isnan(self.p_value) or self.p_value >= SIGNIFICANCE:
            return "no clear difference yet"
        return "leads" if self.lift > 0 else "trails"


@dataclass(slots=True)
class BiasFigures:
    """Means over the window of a variant's live bias gauges, now and the window before."""

    variant: str
    coverage: float = math.nan
    popular_share: float = math.nan
    gini: float = math.nan
    categories: float = math.nan
    before_coverage: float = math.nan
    before_popular_share: float = math.nan


@dataclass(slots=True)
class LiveFigures:
    window_s: float
    end: float  # epoch seconds the window ends at
    variants: list[VariantQuality] = field(default_factory=list)
    hit_sources: dict[str, float] = field(default_factory=dict)  # reason -> hits at 20
    bias: list[BiasFigures] = field(default_factory=list)
    #: variant -> (epoch s, HR@20 over the step before it), CURVE_POINTS over the window
    curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    coverage_curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    popular_curve: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def scored(self) -> float:
        return sum(variant.scored for variant in self.variants)


def compare(control: VariantQuality, other: VariantQuality) -> Comparison:
    """``other``'s HR@20 against ``control``'s (pooled two-proportion z-test, two-sided)."""
    n1, n2 = control.scored, other.scored
    if n1 <= 0 or n2 <= 0:
        return Comparison(other.variant, math.nan, math.nan, math.nan)
    p1, p2 = control.hits / n1, other.hits / n2
    pooled = (control.hits + other.hits) / (n1 + n2)
    spread = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    lift = p2 / p1 - 1.0 if p1 > 0 else math.nan
    if spread == 0.0:
        return Comparison(other.variant, lift, math.nan, math.nan)
    z = (p2 - p1) / spread
    return Comparison(other.variant, lift, z, math.erfc(abs(z) / math.sqrt(2.0)))


def read_live_figures(api: PrometheusApi, window_s: float, end: float) -> LiveFigures:
    """Every figure of the report's live part, from a handful of queries at ``end``."""
    figures = LiveFigures(window_s, end)
    window = f"{int(window_s)}s"

    def by_variant(promql: str) -> dict[str, float]:
        return {s.labels.get("variant", ""): s.value for s in api.query(promql, at=end)}

    def increase(series: str, matcher: str = "", before: bool = False) -> dict[str, float]:
        shift = f" offset {window}" if before else ""
        return by_variant(f"sum by (variant) (increase({series}{matcher}[{window}]{shift}))")

    scored = increase("tailor_live_scored_events_total")
    hits = increase("tailor_live_hits_total", '{k="20"}')
    ranks = increase("tailor_live_reciprocal_rank_total")
    before_scored = increase("tailor_live_scored_events_total", before=True)
    before_hits = increase("tailor_live_hits_total", '{k="20"}', before=True)
    for name in sorted(set(scored) | set(before_scored), key=lambda n: (n != CONTROL, n)):
        figures.variants.append(
            VariantQuality(
                name,
                scored.get(name, 0.0),
                hits.get(name, 0.0),
                ranks.get(name, 0.0),
                before_scored.get(name, 0.0),
                before_hits.get(name, 0.0),
            )
        )
    figures.hit_sources = {
        s.labels.get("reason", "?"): s.value
        for s in api.query(
            f"sum by (reason) (increase(tailor_live_hits_by_reason_total[{window}]))", at=end
        )
        if s.value > 0
    }

    def mean(gauge: str, before: bool = False) -> dict[str, float]:
        shift = f" offset {window}" if before else ""
        return by_variant(f"avg by (variant) (avg_over_time({gauge}[{window}]{shift}))")

    coverage, popular = mean("tailor_live_catalog_coverage"), mean("tailor_live_popular_share")
    gini, categories = mean("tailor_live_exposure_gini"), mean("tailor_live_categories_per_list")
    before_coverage = mean("tailor_live_catalog_coverage", before=True)
    before_popular = mean("tailor_live_popular_share", before=True)
    for name in sorted(set(coverage) | set(popular), key=lambda n: (n != CONTROL, n)):
        figures.bias.append(
            BiasFigures(
                name,
                coverage.get(name, math.nan),
                popular.get(name, math.nan),
                gini.get(name, math.nan),
                categories.get(name, math.nan),
                before_coverage.get(name, math.nan),
                before_popular.get(name, math.nan),
            )
        )
    _read_curves(api, figures)
    return figures


def _read_curves(api: PrometheusApi, figures: LiveFigures) -> None:
    step = max(figures.window_s / CURVE_POINTS, 15.0)
    span = f"{int(step)}s"
    start = figures.end - figures.window_s
    hit_rate = (
        f'sum by (variant) (increase(tailor_live_hits_total{{k="20"}}[{span}])) '
        f"/ sum by (variant) (increase(tailor_live_scored_events_total[{span}]))"
    )
    for target, promql in (
        (figures.curve, hit_rate),
        (figures.coverage_curve, "avg by (variant) (tailor_live_catalog_coverage)"),
        (figures.popular_curve, "avg by (variant) (tailor_live_popular_share)"),
    ):
        for series in api.query_range(promql, start, figures.end, step):
            if series.points:
                target[series.labels.get("variant", "")] = series.points

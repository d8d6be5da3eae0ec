"""The report's picture: live HR@20 by variant over the window, and bias beside it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from worker.report.figures import LiveFigures

__all__ = ["plot_live"]


def plot_live(figures: LiveFigures, out: Path, title: str) -> Path:
    """Two panels sharing the time axis: HR@20 per variant; coverage and top-1 % share."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    figure, (quality, bias) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)

    def times(points: list[tuple[float, float]]) -> list[datetime]:
        return [datetime.fromtimestamp(t, UTC) for t, _ in points]

    for variant, points in sorted(figures.curve.items()):
        quality.plot(
            times(points), [100 * v for _, v in points], marker=".", label=variant or "all"
        )
    quality.set_ylabel("live HR@20 (%)")
    quality.set_title(title)
    quality.grid(alpha=0.3)
    if figures.curve:
        quality.legend(loc="best")
    for variant, points in sorted(figures.coverage_curve.items()):
        bias.plot(
            times(points), [100 * v for _, v in points], marker=".", label=f"coverage, {variant}"
        )
    for variant, points in sorted(figures.popular_curve.items()):
        bias.plot(
            times(points),
            [100 * v for _, v in points],
            linestyle="--",
            marker=".",
            label=f"slots to the top 1 % items, {variant}",
        )
    bias.set_ylabel("% of catalog / of slots")
    bias.set_xlim(
        datetime.fromtimestamp(figures.end - figures.window_s, UTC),
        datetime.fromtimestamp(figures.end, UTC),
    )
    bias.set_xlabel("time (UTC)")
    bias.grid(alpha=0.3)
    if figures.coverage_curve or figures.popular_curve:
        bias.legend(loc="best", fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out

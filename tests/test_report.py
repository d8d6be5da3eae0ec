"""``tailor report``'s figures and sentences (pure), and the command on real servers.

The pure parts are checked on hand-worked numbers; the end-to-end test lives with the
real Prometheus in tests/test_prometheus.py, where a worker's live series exist.
"""

from __future__ import annotations

import argparse
import math

import pytest

from worker.report.command import parse_duration
from worker.report.figures import BiasFigures, LiveFigures, VariantQuality, compare
from worker.report.text import TrendingSection, describe_window, live_lines, trending_lines


def test_compare_matches_a_hand_worked_two_proportion_test() -> None:
    # control 100 hits of 1000, variant 130 of 1000: pooled 0.115,
    # se = sqrt(0.115 * 0.885 * 2 / 1000) = 0.014267; z = 0.03 / 0.014267 = 2.1028
    control = VariantQuality("control", scored=1000, hits=100)
    other = VariantQuality("b", scored=1000, hits=130)
    result = compare(control, other)
    assert result.lift == pytest.approx(0.30)
    assert result.z == pytest.approx(2.1028, abs=1e-3)
    assert result.p_value == pytest.approx(0.03548, abs=1e-4)
    assert result.verdict == "leads"


def test_compare_calls_a_small_difference_noise() -> None:
    result = compare(
        VariantQuality("control", scored=200, hits=20), VariantQuality("b", scored=200, hits=22)
    )
    assert result.p_value > 0.05
    assert result.verdict == "no clear difference yet"


def test_compare_without_counts_has_no_verdict() -> None:
    result = compare(VariantQuality("control"), VariantQuality("b", scored=10, hits=1))
    assert math.isnan(result.p_value)
    assert result.verdict == "no clear difference yet"


def test_variant_change_is_relative_to_the_window_before() -> None:
    quality = VariantQuality("control", scored=100, hits=22, before_scored=200, before_hits=40)
    assert quality.hit_rate == pytest.approx(0.22)
    assert quality.before_hit_rate == pytest.approx(0.20)
    assert quality.change == pytest.approx(0.10)


def _figures() -> LiveFigures:
    figures = LiveFigures(window_s=7 * 86400, end=0.0)
    figures.variants = [
        VariantQuality("control", 1000, 100, 40.0, 1000, 80),
        VariantQuality("diverse", 1000, 130, 50.0, 0, 0),
        VariantQuality("no-trend", 1000, 90, 30.0, 0, 0),
    ]
    figures.hit_sources = {"covisited": 150.0, "trending": 50.0, "taste": 30.0}
    figures.bias = [BiasFigures("control", 0.12, 0.38, 0.71, 3.2, 0.10, 0.40)]
    return figures


def test_live_lines_say_quality_its_movement_sources_leader_and_bias() -> None:
    text = "\n".join(live_lines(_figures(), shadows=frozenset({"no-trend"})))
    # published users only: (100 + 130) / 2000; the week before 80 / 1000
    assert "tested on 2,000 next interactions; 11.5 %" in text
    assert "Against the 7 days before (8.0 %), HR@20 rose (+43.8 %)." in text
    assert "bought or viewed together 65 %" in text
    assert "- diverse: HR@20 13.0 % over 1,000 (+30.0 %) against control, p = 0.035: leads." in text
    assert "- no-trend (shadow: computed, never shown)" in text
    assert "Leader: diverse." in text
    assert "showed 12.0 % of the catalog (was 10.0 %)" in text


def test_live_lines_without_scored_events_say_so() -> None:
    lines = live_lines(LiveFigures(window_s=3600, end=0.0))
    assert lines[0].startswith("No list was tested in the last 1 hour")


def test_trending_lines_use_titles_where_known() -> None:
    lines = trending_lines(
        [TrendingSection("", ["a", "b"]), TrendingSection("country:FR", [])], {"a": "Red mug"}
    )
    assert lines == ["Trending for everyone: Red mug; b.", "Trending for country FR: nothing yet."]


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604800.0), ("12h", 43200.0), ("90s", 90.0), ("1w", 604800.0)]
)
def test_durations_read_in_prometheus_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7", "0d", "-1h", "a week"])
def test_bad_durations_are_refused_by_name(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration(text)


def test_windows_are_described_in_words() -> None:
    assert describe_window(604800) == "7 days"
    assert describe_window(3600) == "1 hour"
    assert describe_window(90) == "90 seconds"

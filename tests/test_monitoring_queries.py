"""Every PromQL expression of the rules and the dashboard names only what the worker exports.

Offline: the expressions are parsed and their series looked up in the worker's own
registry (tests/monitoring.py says why). ``promtool``, when installed (``make tools``),
checks the rules and the compose Prometheus configuration as Prometheus would load them.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.monitoring import (
    ROOT,
    RULES,
    SCRAPE_SERIES,
    counter_samples,
    dashboard_expressions,
    exported_series,
    rated_series,
    recording_rules,
    rule_expressions,
    selected_series,
)
from worker.metrics import Metrics

EXPORTED = exported_series(Metrics().registry)
RECORDED = frozenset(recording_rules())
QUERIES = rule_expressions() + dashboard_expressions()


def test_the_registry_is_read_whole() -> None:
    """Labelled families without children count too, with the names a scrape shows."""
    assert {
        "tailor_events_consumed_total",  # counter with a label, never incremented here
        "tailor_event_to_publish_seconds_bucket",
        "tailor_event_to_publish_seconds_count",
        "tailor_consumer_lag",  # labelled gauge
        "tailor_ready",
    } <= EXPORTED
    assert "tailor_events_consumed" not in EXPORTED  # a counter's samples end in _total


def test_rules_and_dashboard_have_queries() -> None:
    assert len(rule_expressions()) >= 15
    assert len(dashboard_expressions()) >= 15
    assert any(where.startswith("variable") for where, _ in dashboard_expressions())


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_every_query_names_only_exported_series(where: str, expr: str) -> None:
    selected = selected_series(expr)
    assert selected, f"{where}: selects no series at all"
    unknown = selected - EXPORTED - RECORDED - SCRAPE_SERIES
    assert not unknown, f"{where}: the worker exports no {sorted(unknown)}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[where for where, _ in QUERIES])
def test_rates_are_taken_of_counters(where: str, expr: str) -> None:
    not_counters = rated_series(expr) - counter_samples(EXPORTED)
    assert not not_counters, f"{where}: rate()/increase() of {sorted(not_counters)}"


def test_recording_rules_only_build_on_earlier_ones() -> None:
    """Prometheus evaluates a group's rules in order: a rule that reads a later one sees
    the previous evaluation's value."""
    seen: set[str] = set()
    for name, expr in recording_rules().items():
        later = (selected_series(expr) & RECORDED) - seen
        assert not later, f"{name} reads {sorted(later)}, recorded after it"
        seen.add(name)


def test_the_check_sees_names_wherever_they_are_written() -> None:
    """The extraction finds series inside functions, ranges, aggregations and binary
    operations, and a misspelt name is reported."""
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(tailor_batch_size_bucket[5m]))) "
        "/ on (namespace) group_left sum without (topic) (tailor_events_consumd_total) "
        'and {__name__="tailor_ready"} offset 5m'
    )
    assert selected_series(expr) == {
        "tailor_batch_size_bucket",
        "tailor_events_consumd_total",
        "tailor_ready",
    }
    assert selected_series(expr) - EXPORTED == {"tailor_events_consumd_total"}
    assert rated_series("rate(tailor_ready[5m])") - counter_samples(EXPORTED) == {"tailor_ready"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: `make tools` installs it")
def test_promtool_accepts_the_rules_and_the_compose_configuration() -> None:
    for what, path in (("rules", RULES), ("config", ROOT / "deploy/prometheus/prometheus.yml")):
        done = subprocess.run(
            ["promtool", "check", what, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool: `make tools` installs it")
def test_the_live_quality_and_bias_alerts_fire_when_they_should_and_only_then() -> None:
    """``promtool test rules``: drift of live HR@20 below its own level, a coverage collapse
    and a jump in popularity concentration fire for the variant concerned; a steady
    variant and one with too few scored events stay quiet (deploy/prometheus/rules_test.yml)."""
    done = subprocess.run(
        ["promtool", "test", "rules", str(RULES.parent / "rules_test.yml")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout

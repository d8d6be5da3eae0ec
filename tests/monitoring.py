"""What the monitoring files ask Prometheus for, and what the worker exports.

Why: a rule or panel that names a series the worker does not export is silently empty
(an alert that can never fire, a flat panel), and neither promtool nor Grafana says so.
So the PromQL of ``deploy/prometheus/rules.yml`` and of the Grafana dashboard is parsed
(``promql-parser``, the Prometheus grammar) and every series it selects is looked up in
the worker's own registry (:class:`worker.metrics.Metrics`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tailor-dashboard.json"

#: Series Prometheus writes itself for every scrape target, whatever the target exports.
SCRAPE_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)

#: The sample names prometheus-client writes for each metric type (the family's name
#: plus these suffixes); ``_created`` unless PROMETHEUS_DISABLE_CREATED_SERIES is set.
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
}

#: Functions whose argument must be a counter: a rate of a gauge is meaningless.
_COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase", "resets"})


def exported_series(registry: CollectorRegistry) -> frozenset[str]:
    """Every sample name the registry exposes, labelled families without children too.

    ``collect()`` yields no samples for a labelled metric that has never been set, so
    the names come from each family's name and type, as the exposition would write them.
    """
    names: set[str] = set()
    for family in registry.collect():
        suffixes = _SAMPLE_SUFFIXES.get(family.type)
        if suffixes is None:
            raise ValueError(f"{family.name}: metric type {family.type!r} not known here")
        names.update(family.name + suffix for suffix in suffixes)
    return frozenset(names)


def counter_samples(series: frozenset[str]) -> frozenset[str]:
    """The exported names that only ever grow (what rate() and increase() may take)."""
    return frozenset(n for n in series if n.endswith(("_total", "_bucket", "_count", "_sum")))


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def recording_rules() -> dict[str, str]:
    """Name -> expression of every recording rule."""
    return {
        rule["record"]: rule["expr"]
        for group in rule_groups()
        for rule in group["rules"]
        if "record" in rule
    }


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, expression) for every recording and alerting rule."""
    return [
        (rule.get("record") or rule["alert"], rule["expr"])
        for group in rule_groups()
        for rule in group["rules"]
    ]


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable of the dashboard.

    Grafana's variables are replaced by what they stand for, so that the result parses:
    a range such as ``[$__rate_interval]`` by ``[5m]``, any other ``$name`` (used in label
    values) by ``.*``. A variable's ``label_values(metric, label)`` becomes ``metric``.
    """
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"panel {panel.get('title')!r} {target.get('refId', '')}".strip()
                found.append((where, _without_variables(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if variable.get("type") == "query":
            found.append((f"variable {variable['name']!r}", _label_values_metric(text)))
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _without_variables(expr: str) -> str:
    expr = re.sub(r"\[\$\{?__\w+\}?\]", "[5m]", expr)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


def _label_values_metric(query: str) -> str:
    """``label_values(tailor_ready, namespace)`` -> ``tailor_ready`` (Grafana, not PromQL)."""
    found = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*\w+\s*\)\s*", query)
    return _without_variables(found.group(1) if found else query)


def selected_series(expr: str) -> frozenset[str]:
    """Names of every series an expression selects (raises on PromQL that does not parse)."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.update(_names_of(node))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return frozenset(names)


def rated_series(expr: str) -> frozenset[str]:
    """Names of the series handed to rate(), irate(), increase() or resets()."""
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.Call) and node.func.name in _COUNTER_FUNCTIONS:
            for argument in node.args:
                if isinstance(argument, promql_parser.MatrixSelector):
                    names.update(_names_of(argument.vector_selector))

    promql_parser.walk(promql_parser.parse(expr), visit)
    return frozenset(names)


def _names_of(selector: promql_parser.VectorSelector) -> set[str]:
    """The metric name, written before the braces or as a ``__name__`` matcher."""
    names = {selector.name} if selector.name else set()
    for matcher in selector.matchers.matchers:
        if matcher.name == "__name__":
            if matcher.op != promql_parser.MatchOp.Equal:
                raise ValueError(f"{selector}: select series by exact name, not a pattern")
            names.add(matcher.value)
    return names

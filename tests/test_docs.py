"""The README is the operator's manual: it must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from worker.config import Settings
from worker.metrics import Metrics, ServeMetrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_setting() -> None:
    missing = [
        f"TAILOR_{name.upper()}"
        for name in Settings.model_fields
        if f"`TAILOR_{name.upper()}`" not in README
    ]
    assert missing == []


def _metric_names() -> set[str]:
    """The worker's series and ``tailor serve``'s."""
    registries = (Metrics().registry, ServeMetrics().registry)
    return {metric.name for registry in registries for metric in registry.collect()}


def test_readme_lists_every_metric() -> None:
    names = _metric_names()
    missing = [name for name in sorted(names) if f"`{name}" not in README]
    assert missing == []


def test_readme_starts_with_the_two_set_up_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block
    assert "make test" in first_block


def test_readme_configuration_table_matches_the_settings() -> None:
    """Regenerate with ``tailor config --markdown`` when a setting changes."""
    from worker.cli import settings_table_markdown

    assert settings_table_markdown() in README


ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def test_the_runbook_says_what_to_do_about_every_metric() -> None:
    names = _metric_names()
    missing = [name for name in sorted(names) if f"`{name}" not in OPERATIONS]
    assert missing == []


def test_the_runbook_says_what_to_do_about_every_alert() -> None:
    import yaml

    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert alerts
    assert sorted(alert for alert in alerts if f"`{alert}`" not in OPERATIONS) == []

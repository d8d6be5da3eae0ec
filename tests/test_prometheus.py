"""A real Prometheus scrapes a real ``tailor run`` and evaluates the project's rules.

Why: the offline checks (tests/test_monitoring_queries.py) prove that the rules name
exported series; only Prometheus itself shows that it can scrape the worker's exposition,
that the series arrive with the labels the rules group by, and that every rule evaluates
without error. Debian's ``prometheus`` (``make tools`` installs it) runs on 127.0.0.1 with
a one-second scrape and evaluation interval, loads ``deploy/prometheus/rules.yml`` as it
is, and is stopped by its pid.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import TopicReader, event, produce, produce_events, tailor_process, wait_until
from tests.monitoring import RULES, recording_rules
from worker.config import Settings

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="no prometheus binary: `make tools` installs Debian's"
    ),
]

Sample = dict[str, Any]


@dataclass(frozen=True)
class Prometheus:
    """The HTTP API of a running Prometheus."""

    url: str

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[Sample]:
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[Sample] = data["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.get("/api/v1/rules")["groups"] for rule in group["rules"]]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_prometheus(config: dict[str, Any], directory: Path) -> Iterator[Prometheus]:
    """Prometheus with ``config`` in ``directory``; ready when the block starts."""
    assert PROMETHEUS is not None
    directory.mkdir(parents=True)
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{_free_port()}"
    log = directory / "prometheus.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_until(ready, timeout_s=60)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def eventually(
    probe: Callable[[], list[Sample]], what: str, timeout_s: float = 60.0
) -> list[Sample]:
    """Poll ``probe`` until it returns samples; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not (found := probe()):
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s"
        time.sleep(0.25)
    return found


def test_prometheus_scrapes_the_worker_and_evaluates_every_rule(
    settings: Settings, tmp_path: Path
) -> None:
    good = [event(f"p{n % 4}", f"item-{n % 7}") for n in range(30)]
    # Bias windows of 5 lists, so that their gauges are set within the test.
    settings = settings.model_copy(update={"quality_window_lists": 5})
    with tailor_process(settings, tmp_path / "worker.log") as worker:
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "tailor",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [worker.metrics_url.split("/")[2]]}],
                }
            ],
        }
        with running_prometheus(config, tmp_path / "prometheus") as prometheus:
            # A first scrape before the events, so that every counter is seen to grow. Two
            # waves: a labelled series (consumed per topic, dead-lettered per reason) is
            # born with its first batch already counted, which rate() cannot see; the
            # second wave makes each of them grow under Prometheus' eyes.
            eventually(lambda: prometheus.query('up{job="tailor"} == 1'), "successful scrape")
            # The users get a first list before the waves, so that their events in both
            # waves are scored: the live quality series too are born in the first wave.
            produce_events(settings, [event(f"p{n}", "item-0") for n in range(4)])
            first = "tailor_events_processed_total >= 4"
            eventually(partial(prometheus.query, first), "the users' first lists")
            for wave, events in enumerate((good[:15], good[15:]), start=1):
                produce_events(settings, events)
                produce(settings, settings.events_topic, [(b"p0", b"not json")])
                both = (
                    f"tailor_events_processed_total >= {4 + 15 * wave} and "
                    f"on () tailor_events_dead_lettered_total >= {wave}"
                )
                processed = eventually(
                    partial(prometheus.query, both), f"wave {wave} of events and dead letters"
                )
            assert {s["metric"]["job"] for s in processed} == {"tailor"}

            # Every recording rule yields a series (the lag once librdkafka's statistics,
            # every 5 s, have reported it).
            for name in recording_rules():
                eventually(partial(prometheus.query, name), f"series from {name}")

            def value(promql: str) -> float:
                samples = eventually(lambda: prometheus.query(promql), promql)
                assert len(samples) == 1, samples
                return float(samples[0]["value"][1])

            assert value("tailor:events_processed:rate1m") > 0
            assert value(f'tailor:events_consumed:rate1m{{topic="{settings.events_topic}"}}') > 0
            assert value('tailor:events_dead_lettered:rate5m{reason="not_json"}') > 0
            assert 0 < value("tailor:dead_letter_ratio:rate5m") < 1
            p99 = value("tailor:event_to_publish_seconds:p99_5m")
            assert math.isfinite(p99), p99
            assert 0 < p99 <= 5
            assert value(f'tailor:consumer_lag:sum{{topic="{settings.events_topic}"}}') == 0
            # Live quality: returning users' events were scored against their last lists
            # (the device "web" of tests.helpers.event is a known segment), and the bias
            # windows closed.
            scored = 'sum(tailor_live_scored_events_total{variant="control",segment="web"})'
            assert value(scored) > 0
            assert value('tailor:live_scored_events:rate5m{variant="control"}') > 0
            hits = value('sum(tailor_live_hits_total{variant="control",k="20"})')
            assert hits <= value('sum(tailor_live_scored_events_total{variant="control"})')
            # (a ratio of two young series' rates is only near HR: rate() extrapolates each
            # by its own counts; that it evaluates to a number is what is checked here)
            hit_rate = value('tailor:live_hit_rate:ratio_rate5m{variant="control",k="20"}')
            assert math.isfinite(hit_rate), hit_rate
            assert hit_rate >= 0
            assert 0 < value('tailor:live_catalog_coverage:avg{variant="control"}') <= 1
            assert 0 < value('tailor:live_popular_share:avg{variant="control"}') <= 1

            # Every rule, the alerts too, has been evaluated without an error.
            def evaluated() -> list[Sample]:
                rules = prometheus.rules()
                return rules if all(r["health"] != "unknown" for r in rules) else []

            rules = eventually(evaluated, "an evaluation of every rule")
            assert {r["name"] for r in rules} >= set(recording_rules())
            failing = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
            assert not failing, failing
            # A worker that is scraped and ready raises neither of the alerts about that
            # (the others depend on this machine's load, e.g. the 50 ms latency one).
            active = {r["name"] for r in rules if r["type"] == "alerting" and r["alerts"]}
            assert not active & {"TailorDown", "TailorNotReady"}, active


SAMPLE = Path(__file__).parents[1] / "worker" / "sample"
EXPERIMENT = {
    "short": {"share": 0.5, "settings": {"top_k": 10}},
    "wide": {"share": 1.0, "shadow": True, "settings": {"max_per_category": 2}},
}


def test_an_experiment_live_matches_tailor_evaluate_variants_and_tailor_report_reads_it(
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two variants and a shadow in a real worker: Prometheus holds, per variant, the
    scored events and hits at 20 that ``tailor evaluate --variants`` counts on the same
    events (batches of one event on one partition, as the harness replays them), and
    ``tailor report`` reads them back into its experiment lines, table and plot."""
    from worker.cli import main
    from worker.evaluate.logs import load_log
    from worker.transport.kafka import create_topics

    count = 300
    log = load_log(SAMPLE / "events.jsonl.gz", catalog_path=SAMPLE / "catalog.jsonl.gz")
    events = log.events[:count]
    base = Settings(
        bootstrap_servers=kafka_bootstrap,
        redis_url=redis_url,
        batch_size=1,
        variants=EXPERIMENT,
    )
    settings = base.in_namespace(uuid.uuid4().hex[:10], metrics_port=0, batch_wait_ms=0)
    create_topics(settings, partitions=1)
    items: list[tuple[bytes | None, bytes | None]] = [
        (i.encode(), item.model_dump_json().encode()) for i, item in log.catalog.items()
    ]
    produce(settings, settings.catalog_topic, items)
    reader = TopicReader(settings, settings.recommendations_topic)
    try:
        with tailor_process(settings, tmp_path / "worker.log") as worker:
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "tailor",
                        "static_configs": [{"targets": [worker.metrics_url.split("/")[2]]}],
                    }
                ],
            }
            with running_prometheus(config, tmp_path / "prometheus") as prometheus:
                eventually(lambda: prometheus.query('up{job="tailor"} == 1'), "a scrape")
                # Two halves, so that every live series is scraped before it grows:
                # increase() over the window, as the report reads it, sees the second.
                for end in (count // 2, count):
                    start = end - count // 2
                    produce(
                        settings,
                        settings.events_topic,
                        [
                            (e.user_id.encode(), e.model_dump_json().encode())
                            for e in events[start:end]
                        ],
                    )
                    done = f"tailor_events_processed_total >= {end}"
                    eventually(partial(prometheus.query, done), f"{end} events in Prometheus")
                    time.sleep(2)  # one more scrape after the last batch
                assert len(reader.wait_for(lambda seen: len(seen) >= count, timeout_s=60)) >= count

                def per_variant(promql: str) -> dict[str, float]:
                    return {
                        s["metric"]["variant"]: float(s["value"][1])
                        for s in prometheus.query(f"sum by (variant) ({promql})")
                    }

                scored = per_variant("tailor_live_scored_events_total")
                hits = per_variant('tailor_live_hits_total{k="20"}')
                window_scored = per_variant("increase(tailor_live_scored_events_total[10m])")
                window_hits = per_variant('increase(tailor_live_hits_total{k="20"}[10m])')

                experiment = tmp_path / "experiment.json"
                experiment.write_text(json.dumps(EXPERIMENT))
                for name in [n for n in os.environ if n.startswith("TAILOR_")]:
                    monkeypatch.delenv(name)
                for name, value in settings.as_environment().items():
                    monkeypatch.setenv(name, value)
                offline = tmp_path / "offline.json"
                argv = ["evaluate", str(SAMPLE / "events.jsonl.gz")]
                argv += ["--catalog", str(SAMPLE / "catalog.jsonl.gz"), "--limit", str(count)]
                argv += ["--warmup", "0", "--batch-size", "1", "--baselines", "none"]
                argv += ["--no-progress", "--variants", str(experiment), "--json", str(offline)]
                assert main(argv) == 0
                models = {m["name"]: m for m in json.loads(offline.read_text())["models"]}

                report = tmp_path / "report.json"
                plot = tmp_path / "report.png"
                argv = ["report", "--prometheus", prometheus.url, "--window", "10m"]
                argv += ["--no-titles", "--json", str(report), "--plot", str(plot)]
                assert main(argv) == 0
                said = capsys.readouterr().out
    finally:
        reader.close()

    for variant, name in (
        ("short", "tailor short"),
        ("control", "tailor control"),
        ("wide", "tailor wide (shadow)"),
    ):
        assert scored[variant] == models[name]["counted"] > 0, variant
        # the JSON rounds HR to four places
        assert hits[variant] / scored[variant] == pytest.approx(models[name]["HR@20"], abs=1e-4)
    live = json.loads(report.read_text())["live"]
    read = {v["variant"]: v for v in live["variants"]}
    assert set(read) == {"short", "control", "wide"}
    for variant, figures in read.items():
        # what Prometheus says of the window (increase() extrapolates a little to the
        # window's end, so a later look reads slightly more)
        seen = (variant, figures, window_scored, window_hits)
        assert figures["scored"] == pytest.approx(window_scored[variant], rel=0.1), seen
        assert figures["hits"] == pytest.approx(window_hits[variant], rel=0.1), seen
        assert figures["scored"] > 0, seen
    assert plot.stat().st_size > 10_000
    assert "Experiment: control has HR@20" in said
    assert "- short: HR@20" in said
    assert "- wide (shadow: computed, never shown): HR@20" in said

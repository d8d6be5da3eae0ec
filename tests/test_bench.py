"""``tailor bench``: the benchmarks run and report sane measurements.

Speed is never asserted here (it is shown by the benchmarks' printed numbers, see
BENCHMARKS.md); these tests check that what they report is well formed and consistent.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from worker.bench import BenchError, Clickstream, WorkerOptions, Workload, run_worker
from worker.bench import worker as bench_worker
from worker.cli import main
from worker.config import Settings
from worker.contract import CatalogItem, Event

TINY = ["--items", "2000", "--categories", "40", "--users", "500", "--events", "3000"]


def _core(tmp_path: Path, name: str, *extra: str) -> dict[str, Any]:
    out = tmp_path / name
    code = main(["bench", "core", *TINY, "--no-progress", "--json", str(out), *extra])
    assert code == 0
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


def test_bench_core_reports_sane_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _core(tmp_path, "core.json", "--batch-size", "250")

    assert result["bench"] == "core"
    assert result["warmup_events"] == 600  # the default 0.2 of 3000, processed but not timed
    assert result["events"] == 3000 - 600
    assert result["batches"] == 2400 // 250 + 1
    assert result["catalog_items"] == 2000
    assert result["events_per_s"] > 0
    assert result["lists_per_s"] > 0
    assert 0 < result["lists"] <= result["events"]  # one list per user per batch
    assert 0 < result["distinct_users_per_batch"] <= 250
    assert 0 < result["users_seen"] <= 500
    batch = result["batch_ms"]
    assert 0 < batch["p50"] <= batch["p95"] <= batch["p99"] <= batch["max"]
    machine = result["machine"]
    assert machine["cores"] >= 1
    assert machine["python"]
    assert machine["numpy"]
    assert result["options"]["batch_size"] == 250

    printed = capsys.readouterr().out
    assert "tailor bench core" in printed
    assert "events/s" in printed
    assert "batch p99 ms" in printed


def test_bench_core_counts_repeat_with_the_same_seed(tmp_path: Path) -> None:
    first = _core(tmp_path, "first.json", "--seed", "3")
    second = _core(tmp_path, "second.json", "--seed", "3")
    other = _core(tmp_path, "other.json", "--seed", "4")

    counts = ["events", "warmup_events", "batches", "lists", "users_seen", "catalog_items"]
    assert {k: first[k] for k in counts} == {k: second[k] for k in counts}
    assert first["distinct_users_per_batch"] == second["distinct_users_per_batch"]
    assert (first["lists"], first["users_seen"]) != (other["lists"], other["users_seen"])


def test_the_synthetic_stream_is_valid_skewed_and_continues() -> None:
    stream = Clickstream(Workload(items=3000, categories=30, users=400, seed=1))
    catalog = [CatalogItem.model_validate(body) for body in stream.catalog()]
    assert len({item.item_id for item in catalog}) == 3000
    category_of = {item.item_id: item.leaf_category for item in catalog}

    first = stream.events(4000, start_s=1_700_000_000.0, id_prefix="x")
    more = stream.events(1000, start_s=1_700_000_000.0, id_prefix="x")
    events = [Event.model_validate(body) for body in first + more]
    assert len({event.event_id for event in events}) == 5000
    stamps = [body["timestamp"] for body in first]
    assert stamps == sorted(stamps)

    kinds = Counter(event.type.value for event in events)
    assert kinds["view"] > kinds["click"] > kinds["add_to_cart"] > kinds["purchase"] > 0
    popularity = Counter(event.item_id for event in events).most_common()
    assert popularity[0][1] > 10 * (5000 / 3000)  # Zipf-like: the head is far above the mean
    # Users mostly stay in their favourite categories: their top three hold most events.
    per_user: dict[str, Counter[str | None]] = {}
    for event in events:
        assert event.item_id is not None
        per_user.setdefault(event.user_id, Counter())[category_of[event.item_id]] += 1
    active = [seen for seen in per_user.values() if seen.total() >= 20]
    in_top3 = sum(sum(n for _, n in seen.most_common(3)) for seen in active)
    assert in_top3 / sum(seen.total() for seen in active) > 0.7
    assert {event.context.country for event in events} <= {
        "NL",
        "DE",
        "GB",
        "FR",
        "US",
        "ES",
        "IT",
        "PL",
    }


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        (
            "core",
            [
                "--items",
                "--categories",
                "--users",
                "--events",
                "--warmup",
                "--batch-size",
                "--seed",
                "--json",
                "--no-progress",
            ],
        ),
        (
            "worker",
            [
                "--items",
                "--events",
                "--warmup",
                "--latency-events",
                "--rate",
                "--partitions",
                "--timeout",
                "--keep",
                "--json",
            ],
        ),
    ],
)
def test_help_explains_every_option(
    kind: str, options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["bench", kind, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text
    assert "(default" in text


def test_bad_values_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--events", "0"], ["--warmup", "1"], ["--batch-size", "-5"]):
        with pytest.raises(SystemExit) as done:
            main(["bench", "core", *bad])
        assert done.value.code == 2
    assert "must be" in capsys.readouterr().err


@pytest.mark.integration
def test_bench_worker_measures_drain_and_latency(settings: Settings) -> None:
    options = WorkerOptions(
        workload=Workload(items=2000, categories=40, users=300, seed=5),
        events=2000,
        latency_events=300,
        rate=300.0,
        partitions=2,
        timeout_s=120.0,
        progress=False,
    )
    result = run_worker(settings, options, Console(quiet=True))

    assert result["catalog_items"] == 2000
    drain = result["drain"]
    assert drain["events"] == 2000
    assert drain["events_per_s"] > 0
    assert drain["seconds"] > 0
    assert drain["batches"] > 0
    assert drain["lists_published"] > 0
    assert drain["mean_batch"] > 0
    assert drain["batch_ms_mean"] > 0
    assert drain["redis_ms_mean"] > 0
    assert result["catalog_load_s"] > 0
    assert result["worker_start_s"] > result["catalog_load_s"]
    latency = result["latency"]
    assert latency["events"] == 300
    assert latency["covered"] == 300  # every paced event got a list
    assert latency["missing"] == 0
    assert latency["achieved_rate"] > 0
    ms = latency["ms"]
    assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]
    assert latency["lists_published"] > 0
    assert result["machine"]["redis_server"]
    assert result["worker_exit_code"] == 0  # stopped by SIGTERM, cleanly


@pytest.mark.integration
def test_bench_worker_cleans_up_after_itself(settings: Settings) -> None:
    import redis

    from worker.transport.kafka import make_admin

    options = WorkerOptions(
        workload=Workload(items=200, categories=10, users=50, seed=2),
        events=200,
        latency_events=20,
        rate=200.0,
        partitions=1,
        timeout_s=120.0,
        progress=False,
    )
    result = run_worker(settings, options, Console(quiet=True))
    suffix = result["topics_suffix"]

    topics = make_admin(settings).list_topics(timeout=10).topics
    assert not [topic for topic in topics if suffix in topic]
    client = redis.Redis.from_url(settings.redis_url)
    assert list(client.scan_iter(match=f"bench-{suffix}:*")) == []


@pytest.mark.integration
def test_bench_worker_reports_a_worker_that_dies(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    dying = "import sys; print('worker log line'); sys.stderr.write('it broke\\n'); sys.exit(3)"
    monkeypatch.setattr(bench_worker, "_WORKER_COMMAND", (sys.executable, "-c", dying))
    options = WorkerOptions(
        workload=Workload(items=100, categories=5, users=20, seed=2),
        events=100,
        latency_events=10,
        partitions=1,
        timeout_s=60.0,
        progress=False,
    )
    with pytest.raises(BenchError, match="status 3") as caught:
        run_worker(settings, options, Console(quiet=True))
    assert "worker log line" in str(caught.value)
    assert "it broke" in str(caught.value)

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
from worker.bench.procstat import cpu_seconds, peak_rss_bytes
from worker.bench.replay import load_replay, parse_log_map
from worker.bench.report import SIDE_BY_SIDE_HEADING, append_benchmarks
from worker.bench.sidebyside import comparisons
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
        (
            "peer",
            [
                "--items",
                "--events",
                "--warmup",
                "--latency-events",
                "--rate",
                "--workers",
                "--partitions",
                "--memory-users",
                "--peer-venv",
                "--append-benchmarks",
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


# --- `tailor bench` side by side: Tailor, the peer and the relay on the same events ---

SIDE_TINY = [
    "--items",
    "300",
    "--categories",
    "10",
    "--users",
    "100",
    "--events",
    "400",
    "--latency-events",
    "60",
    "--rate",
    "100",
    "--partitions",
    "2",
    "--no-progress",
]


@pytest.mark.integration
def test_tailor_bench_runs_every_system_side_by_side(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole command on a tiny load: every system and measure, counts as sent.

    The peer's venv is made on first use (PyPI, about a minute) in the checkout's
    ``.tailor/peer-venv`` and reused afterwards.
    """
    for name, value in settings.as_environment().items():  # the suite's Kafka and Redis
        if name in {"TAILOR_BOOTSTRAP_SERVERS", "TAILOR_REDIS_URL"}:
            monkeypatch.setenv(name, value)
    out, book = tmp_path / "side.json", tmp_path / "BENCHMARKS.md"
    book.write_text("# Benchmarks\n")
    code = main(["bench", *SIDE_TINY, "--json", str(out), "--append-benchmarks", str(book)])
    assert code == 0
    result: dict[str, Any] = orjson.loads(out.read_bytes())

    assert result["bench"] == "all"
    assert [core["catalog_items"] for core in result["core"]] == [300]
    runs = {run["system"]: run for run in result["runs"]}
    assert sorted(runs) == ["peer", "relay", "tailor"]
    warmup, drained, paced = 80, 400, 60  # 0.2 of --events waits in the topic at start
    for name, run in runs.items():
        drain = run["drain"]
        assert drain["events"] == drained, name
        assert drain["events_per_s"] > 0, name
        # /proc counts CPU in ticks of 10 ms: the relay may spend less on 400 events.
        assert drain["cpu_ms_per_1000"] > 0 or name == "relay", name
        assert drain["kafka_bytes_in_per_event"] > 0, name
        assert drain["kafka_bytes_out_per_event"] > 0, name
        assert run["start_to_first_output_s"] > 0, name
        assert len(run["peak_rss_mb"]) == 1, name  # --workers 1
        assert run["peak_rss_mb"][0] > 10, name
        assert run["exit_codes"] == [0], name  # stopped by SIGTERM, cleanly
        for phase in ("latency_half_drain", "latency_at_rate"):
            latency = run[phase]
            assert latency["events"] == latency["covered"] == paced, (name, phase)
            ms = latency["ms"]
            assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"], (name, phase)
        assert run["latency_at_rate"]["rate"] == 100
        assert run["latency_half_drain"]["rate"] == pytest.approx(drain["events_per_s"] / 2)
    total = warmup + drained + 2 * paced
    # One output per event from the peer and the relay; Tailor's lists may cover several.
    assert runs["relay"]["outputs"] == runs["peer"]["outputs"] == total
    assert 0 < runs["tailor"]["outputs"] <= total
    # The relay forwards the very bytes it reads, and never talks to Redis.
    relay = runs["relay"]["drain"]
    assert relay["kafka_bytes_out_per_event"] == relay["kafka_bytes_in_per_event"]
    assert relay["redis_commands_per_event"] == 0
    assert runs["relay"]["redis_memory"] is None
    # The peer: one GET and one SET per event, each its own round trip; Tailor pipelines.
    peer = runs["peer"]["drain"]
    assert peer["redis_commands"]["get"] == peer["redis_commands"]["set"] == drained
    assert peer["redis_round_trips_per_event"] >= 2
    assert runs["tailor"]["drain"]["redis_round_trips_per_event"] < 1
    for name in ("tailor", "peer"):
        memory = runs[name]["redis_memory"]
        assert 0 < memory["users"] <= 100, name
        assert memory["bytes_per_user"] > 0, name
        assert memory["mib_per_million_users"] == pytest.approx(
            memory["bytes_per_user"] * 1e6 / 2**20
        )
    [compared] = result["comparisons"]
    tailor_rate = runs["tailor"]["drain"]["events_per_s"]
    assert compared["throughput_x_peer"] == pytest.approx(
        tailor_rate / runs["peer"]["drain"]["events_per_s"]
    )
    assert compared["throughput_of_relay"] == pytest.approx(
        tailor_rate / runs["relay"]["drain"]["events_per_s"]
    )
    assert compared["cpu_per_event_x_peer"] > 0

    printed = capsys.readouterr().out
    for shown in ("side by side", "x the peer's", "share of the relay's", "drain events/s"):
        assert shown in printed
    lines = book.read_text().splitlines()
    assert "## Issue 11: side by side" in lines
    assert lines[-1].startswith(f"| {result['when'][:10]} |")
    assert "tailor bench" in lines[-1]

    import redis

    from worker.transport.kafka import make_admin

    topics = make_admin(settings).list_topics(timeout=10).topics
    for run in runs.values():  # topics and keys of every system are gone
        suffix = run["topics_suffix"]
        assert not [topic for topic in topics if suffix in topic]
        client = redis.Redis.from_url(settings.redis_url)
        assert list(client.scan_iter(match=f"*{suffix}*")) == []


def test_comparisons_are_multiples_of_the_peer_and_fractions_of_the_relay() -> None:
    def run(system: str, items: int, rate: float, cpu: float) -> dict[str, Any]:
        return {
            "system": system,
            "items": items,
            "drain": {"events_per_s": rate, "cpu_ms_per_1000": cpu},
        }

    runs = [
        run("tailor", 10, 3000.0, 300.0),
        run("peer", 10, 1000.0, 600.0),
        run("relay", 10, 60000.0, 2.0),
        run("tailor", 100, 1500.0, 450.0),
        run("peer", 100, 1000.0, 900.0),
    ]
    assert comparisons(runs) == [
        {
            "items": 10,
            "throughput_x_peer": 3.0,
            "cpu_per_event_x_peer": 0.5,
            "throughput_of_relay": 0.05,
        },
        {
            "items": 100,
            "throughput_x_peer": 1.5,
            "cpu_per_event_x_peer": 0.5,
            "throughput_of_relay": 0.025,
        },
    ]
    assert comparisons([run("tailor", 10, 3000.0, 300.0)]) == [{"items": 10}]


def test_proc_readings_of_this_process() -> None:
    import os

    burnt = sum(k * k for k in range(200_000))  # some CPU of our own
    assert burnt > 0
    assert cpu_seconds([os.getpid()]) > 0
    assert cpu_seconds([os.getpid(), os.getpid()]) >= cpu_seconds([os.getpid()])
    assert peak_rss_bytes(os.getpid()) > 10 * 2**20
    assert cpu_seconds([2**22 + 17]) == 0  # no such process
    assert peak_rss_bytes(2**22 + 17) == 0


def test_benchmarks_rows_go_under_their_section(tmp_path: Path) -> None:
    book = tmp_path / "BENCHMARKS.md"
    book.write_text("# Benchmarks\n\n## Speed\n\ntext\n")
    result = _side_result()
    append_benchmarks(result, book, "tailor bench --events 10")
    append_benchmarks(result | {"when": "2027-01-02T00:00:00+00:00"}, book, "tailor bench")
    lines = book.read_text().splitlines()
    heading = lines.index(SIDE_BY_SIDE_HEADING)
    assert lines[:6] == ["# Benchmarks", "", "## Speed", "", "text", ""]
    rows = [line for line in lines[heading:] if line.startswith("| 20")]
    assert [row.split(" | ")[0] for row in rows] == ["| 2026-12-01", "| 2027-01-02"]
    first = rows[0].split(" | ")
    assert first[1] == "`abc1234`"
    assert first[3] == "`tailor bench --events 10`"
    assert first[5] == "2,000 / 1,000 / 50,000"  # drain events/s of Tailor / peer / relay
    assert first[6] == "2.00x"
    assert first[7] == "4.0%"
    assert first[-1] == "300 / 300 / - |"  # Redis bytes per user: the relay keeps none
    # A later section stays after the rows.
    book.write_text(book.read_text() + "\n## Later\n\nmore\n")
    append_benchmarks(result, book, "tailor bench")
    lines = book.read_text().splitlines()
    assert lines.index("## Later") > max(k for k, line in enumerate(lines) if "| 2026" in line)


def _side_result() -> dict[str, Any]:
    def run(system: str, rate: float) -> dict[str, Any]:
        latency = {"ms": {"p99": 10.0}}
        return {
            "system": system,
            "items": 2000,
            "drain": {"events_per_s": rate, "cpu_ms_per_1000": 100.0},
            "latency_at_rate": latency,
            "latency_half_drain": latency,
            "peak_rss_mb": [100.0],
            "redis_memory": {"bytes_per_user": 300.0} if system != "relay" else None,
        }

    runs = [run("tailor", 2000.0), run("peer", 1000.0), run("relay", 50000.0)]
    return {
        "when": "2026-12-01T10:00:00+00:00",
        "options": {"items": [2000]},
        "runs": runs,
        "comparisons": comparisons(runs),
        "machine": {"git": "abc1234", "cores": 2, "cpu_model": "a CPU"},
    }


def test_log_map_reads_like_the_evaluate_options() -> None:
    mapping = parse_log_map(
        "user=CustomerID,item=StockCode,time=InvoiceDate,session=InvoiceNo,country=Country",
        "%Y-%m-%d %H:%M:%S",
        ["Quantity>0"],
    )
    assert (mapping.user, mapping.item, mapping.time, mapping.session) == (
        "CustomerID",
        "StockCode",
        "InvoiceDate",
        "InvoiceNo",
    )
    assert mapping.context == {"country": "Country"}
    assert mapping.time_format == "%Y-%m-%d %H:%M:%S"
    assert [f.column for f in mapping.filters] == ["Quantity"]
    for bad in ("user=a,time=t", "item=a,time=t,colour=c", "item=a,item=b,time=t", "item"):
        with pytest.raises(BenchError, match="--log-map"):
            parse_log_map(bad, "iso", [])


def test_a_jsonl_log_is_replayed_in_time_order(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    lines = [
        {
            "event_id": f"e{k}",
            "user_id": f"u{k % 3}",
            "item_id": f"i{k % 5}",
            "type": "view",
            "timestamp": f"2024-01-01T00:00:{59 - k:02d}Z",
        }
        for k in range(10)
    ]
    log.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    replay = load_replay(log, None, None, 4)
    assert [body["event_id"] for body in replay.events] == ["e9", "e8", "e7", "e6"]
    with pytest.raises(BenchError, match="fewer than"):
        load_replay(log, None, None, 11)


def test_a_part_alone_runs_that_system_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import bench

    asked: list[tuple[str, ...]] = []

    def record(_settings: Settings, options: Any, _console: Console) -> dict[str, Any]:
        asked.append(options.systems)
        raise BenchError("recorded")

    monkeypatch.setattr(bench, "run_side_by_side", record)
    assert main(["bench", "peer", "--events", "10"]) == 1
    assert main(["bench", "relay"]) == 1
    assert main(["bench", "--systems", "tailor,relay"]) == 1
    assert main(["bench"]) == 1
    assert asked == [
        ("peer",),
        ("relay",),
        ("tailor", "relay"),
        ("core", "tailor", "peer", "relay"),
    ]

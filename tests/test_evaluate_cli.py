"""``tailor evaluate`` as a user runs it: options, outputs, and errors that name the option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.cli import main
from worker.config import RECOMMENDER_PARTS
from worker.evaluate.baselines import DEFAULT_PARAMS

SAMPLE = Path(__file__).parents[1] / "worker" / "sample"
EVENTS = str(SAMPLE / "events.jsonl.gz")
CATALOG = str(SAMPLE / "catalog.jsonl.gz")


def test_evaluate_writes_the_table_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, plot = tmp_path / "results.json", tmp_path / "hr.png"
    argv = ["evaluate", EVENTS, "--catalog", CATALOG, "--limit", "800", "--no-progress"]
    argv += ["--baselines", "popular,cooccurrence", "--json", str(out), "--plot", str(plot)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for column in ("HR@10", "HR@20", "MRR@10", "MRR@20", "cold@20", "coverage@20", "events/s"):
        assert column in printed
    results = json.loads(out.read_text())
    assert [m["name"] for m in results["models"]] == ["tailor", "popular", "cooccurrence"]
    assert results["run"]["events"] == 800
    assert results["run"]["warmup"] == 0.2
    tailor = results["models"][0]
    assert 0 < tailor["counted"] < 800
    assert 0 <= tailor["HR@10"] <= tailor["HR@20"] <= 1
    assert tailor["curve"]
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", EVENTS, "--catalog", CATALOG, "--limit", "500", "--no-progress"]
        assert main([*argv, "--baselines", "river-mf", "--seed", "3", "--json", str(out)]) == 0
        runs.append(
            [
                {k: v for k, v in m.items() if k != "events_per_s"}
                for m in json.loads(out.read_text())["models"]
            ]
        )
    assert runs[0] == runs[1]


def test_ablation_runs_tailor_with_each_part_toggled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILOR_PARTS_OFF", '["explore"]')  # and taste on, unlike the default
    out = tmp_path / "ablation.json"
    argv = ["evaluate", EVENTS, "--catalog", CATALOG, "--limit", "300", "--no-progress"]
    assert main([*argv, "--ablate", "--baselines", "none", "--json", str(out)]) == 0
    names = [m["name"] for m in json.loads(out.read_text())["models"]]
    toggled = [f"tailor {'+' if part == 'explore' else '-'}{part}" for part in RECOMMENDER_PARTS]
    assert names == ["tailor", *toggled]
    parts_off = json.loads(out.read_text())["run"]["tailor_settings_changed"]
    assert parts_off == {"parts_off": ["explore"]}


def test_ablation_of_named_parts_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ablation.json"
    argv = ["evaluate", EVENTS, "--catalog", CATALOG, "--limit", "200", "--no-progress"]
    assert main([*argv, "--ablate", "taste,ranker", "--baselines", "none", "--json", str(out)]) == 0
    names = [m["name"] for m in json.loads(out.read_text())["models"]]
    assert names == ["tailor", "tailor -taste", "tailor -ranker"]
    with pytest.raises(SystemExit):
        main([*argv, "--ablate", "taste,magic"])
    assert "unknown part 'magic'" in capsys.readouterr().err


def test_no_tailor_replays_the_baselines_alone_and_over_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "baselines.json"
    argv = ["evaluate", EVENTS, "--catalog", CATALOG, "--limit", "300", "--no-progress"]
    argv += ["--no-tailor", "--baselines", "popular,recent", "--jobs", "2", "--json", str(out)]
    assert main(argv) == 0
    assert [m["name"] for m in json.loads(out.read_text())["models"]] == ["popular", "recent"]
    assert main([*argv[:7], "--no-tailor", "--baselines", "none"]) == 2
    assert "nothing to replay" in capsys.readouterr().err


def test_tune_picks_from_the_grids_on_the_warmup_share_only(tmp_path: Path) -> None:
    out = tmp_path / "tuned.json"
    argv = ["evaluate", EVENTS, "--catalog", CATALOG, "--limit", "1000", "--no-progress"]
    assert main([*argv, "--tune", "--baselines", "popular", "--json", str(out)]) == 0
    best = json.loads(out.read_text())
    assert set(best) == {"tailor", "popular"}
    results = tmp_path / "with-params.json"
    assert (
        main([*argv, "--baselines", "popular", "--params", str(out), "--json", str(results)]) == 0
    )
    used = json.loads(results.read_text())["run"]["baseline_params"]["popular"]
    assert used == {**DEFAULT_PARAMS["popular"], **best["popular"]}


def test_a_retail_csv_with_the_documented_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"]
    for n in range(60):
        invoice = 536000 + n // 3
        rows.append(
            f"{invoice},{100 + (n * 7) % 11},THING {n % 5},{1 + n % 4},"
            f"2010-12-01 {8 + n // 10:02d}:{n % 60:02d}:00,1.5,{17000 + n % 6}.0,France"
        )
    rows.append("C536999,100,THING,-1,2010-12-01 18:00:00,1.5,17000.0,France")
    path = tmp_path / "retail.csv"
    path.write_text("\n".join(rows) + "\n")
    argv = ["evaluate", str(path), "--user", "CustomerID", "--item", "StockCode"]
    argv += ["--time", "InvoiceDate", "--time-format", "%Y-%m-%d %H:%M:%S"]
    argv += ["--session", "InvoiceNo", "--title", "Description", "--context", "country=Country"]
    argv += ["--filter", "CustomerID!=", "--filter", "Quantity>0", "--filter", "InvoiceNo!~^C"]
    assert main([*argv, "--baselines", "sknn,als", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "60 events from 61 rows, 1 dropped by filters" in printed


def test_a_movielens_log_with_an_item_file_reports_the_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented MovieTweetings command on a tiny copy: '::', no header, movies.dat."""
    lines = []
    for user in range(1, 5):  # sorted by user, times out of order within a user
        for n in range(12):
            film = f"{(user * 3 + n * 5) % 11:07d}"
            rating = 4 + (user + n) % 7
            lines.append(f"{user}::{film}::{rating}::{1_362_000_000 + (n * 7919) % 50_000}")
    ratings, movies = tmp_path / "ratings.dat", tmp_path / "movies.dat"
    ratings.write_text("\n".join(lines) + "\n")
    genres = ["Drama|Crime", "Comedy", "Horror|Thriller", ""]
    movies.write_text(
        "".join(f"{n:07d}::Film number {n} ({1990 + n})::{genres[n % 4]}\n" for n in range(14))
    )
    out = tmp_path / "mt.json"
    argv = ["evaluate", str(ratings), "--delimiter", "::", "--columns", "user,item,rating,time"]
    argv += ["--user", "user", "--item", "item", "--time", "time", "--time-format", "epoch"]
    argv += ["--filter", "rating>=7", "--default-type", "like", "--session-gap", "3600"]
    argv += ["--items", str(movies), "--items-columns", "item,title,genres"]
    argv += ["--item-title", "title", "--item-categories", "genres", "--warmup", "0.2"]
    argv += ["--baselines", "popular,sknn", "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    kept = sum(1 for line in lines if int(line.split("::")[2]) >= 7)
    printed = capsys.readouterr().out
    assert f"{kept} events from 48 rows, {48 - kept} dropped by filters" in printed
    for column in ("cold@20", "HR 5-50", "HR >50", "HR seen", "HR new"):
        assert column in printed
    results = json.loads(out.read_text())
    assert results["catalog_items"] == 14  # every film of movies.dat, rated or not
    assert results["run"]["items"] == str(movies)
    assert set(results["split_definitions"]) >= {"k", "first", "5-50", "more", "seen", "new"}
    for model in results["models"]:
        splits = model["splits"]
        assert list(splits) == ["first", "5-50", "more", "seen", "new"]
        by_history = sum(splits[name]["counted"] for name in ("first", "5-50", "more"))
        assert by_history == splits["seen"]["counted"] + splits["new"]["counted"]
        assert by_history == model["counted"] > 0
        assert splits["more"] == {"counted": 0, "hits": 0, "hr": None, "mrr": None}
        assert splits["first"]["hr"] == model["cold@20"]
        assert sum(splits[name]["hits"] for name in ("seen", "new")) == round(
            model["HR@20"] * model["counted"]
        )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baselines", "magic"], "--baselines: unknown magic"),
        (["--item", "StockCode"], "a CSV log needs --time"),
        (["--item", "x", "--time", "t", "--context", "mood=Mood"], "--context 'mood=Mood'"),
        (["--item", "x", "--time", "t", "--filter", "Quantity"], "--filter 'Quantity'"),
        (["--item", "x", "--time", "t", "--value-scale", "10"], "--value-scale needs --value"),
        (["--item", "x", "--time", "t", "--columns", "a,b,a"], "--columns 'a,b,a': a named"),
        (["--item", "x", "--time", "t", "--columns", "a,,b"], "an empty column name"),
        (["--item", "x", "--time", "t", "--delimiter", ""], "--delimiter: must not be empty"),
        (["--item-title", "title"], "--item-title needs --items"),
        (["--items", "movies.dat"], "--items: name its column of item ids with --item-key"),
        (["--value", "rating"], "--value is for a CSV log"),
    ],
)
def test_mistakes_name_the_option(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", EVENTS, *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "absent.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err

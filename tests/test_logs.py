"""Logs as published: MovieLens-style ``::`` files without a header, and item tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from worker.contract import EventType
from worker.evaluate.logs import CsvMapping, ItemFile, LogError, RowFilter, load_log, read_items
from worker.recommend.signals import event_weight

COLUMNS = ("user", "item", "rating", "time")

#: Sorted by user, not by time, as MovieTweetings' ratings.dat is.
RATINGS = """\
1::0001::8::1000
1::0002::5::4000
1::0003::9::200
2::0002::7::1000
2::0004::10::300
2::0001::3::9000
"""

#: movie_id::title (year)::genres; 0004 has no genres, 0099 is never rated.
MOVIES = """\
0001::The Bank (1915)::Comedy|Short
0002::Fantômas - À l'ombre de la guillotine (1913)::Crime|Drama
0004::Goha (1958)::
0099::The Birth of a Nation (1915)::Drama|History|Romance|War
"""


def _ratings(tmp_path: Path, text: str = RATINGS) -> Path:
    path = tmp_path / "ratings.dat"
    path.write_text(text, encoding="utf-8")
    return path


def _movies(tmp_path: Path, text: str = MOVIES) -> Path:
    path = tmp_path / "movies.dat"
    path.write_text(text, encoding="utf-8")
    return path


#: The mapping of RATINGS; tests change a field or two with dataclasses.replace.
MAPPING = CsvMapping(
    item="item", time="time", user="user", time_format="epoch", delimiter="::", columns=COLUMNS
)


def _mapping(**changes: Any) -> CsvMapping:
    return replace(MAPPING, **changes)


def _item_file(path: Path, **changes: Any) -> ItemFile:
    items = ItemFile(
        path,
        key="item",
        title="title",
        categories="genres",
        columns=("item", "title", "genres"),
        delimiter="::",
    )
    return replace(items, **changes)


def test_a_header_less_double_colon_log_is_read_and_sorted_by_time(tmp_path: Path) -> None:
    mapping = _mapping(filters=(RowFilter.parse("rating>=7"),), default_type=EventType.LIKE)
    log = load_log(_ratings(tmp_path), mapping)
    assert (log.rows_read, log.rows_dropped, log.rows_invalid) == (6, 2, 0)
    # Time order; 1::0001 and 2::0002 share t=1000 and keep their file order (lines 1, 4).
    assert [(e.user_id, e.item_id, e.epoch_seconds) for e in log.events] == [
        ("1", "0003", 200.0),
        ("2", "0004", 300.0),
        ("1", "0001", 1000.0),
        ("2", "0002", 1000.0),
    ]
    assert [e.event_id for e in log.events] == ["row-3", "row-5", "row-1", "row-4"]
    assert {e.type for e in log.events} == {EventType.LIKE}
    assert log.events[0].timestamp == datetime(1970, 1, 1, 0, 3, 20, tzinfo=UTC)


def test_a_one_character_delimiter_can_have_named_columns_too(tmp_path: Path) -> None:
    path = tmp_path / "ratings.tsv"
    path.write_text(RATINGS.replace("::", "\t"))
    log = load_log(path, _mapping(delimiter="\t"))
    assert len(log.events) == 6  # the first line is data, not a header


def test_sessions_are_cut_in_time_order_even_in_a_file_sorted_by_user(tmp_path: Path) -> None:
    # User 1 at 200, 1000, 4000 (file order 1000, 4000, 200): with a 1000 s gap the
    # session breaks between 1000 and 4000 only. Cut in file order, 4000 -> 200 would not
    # be a gap and 200 would share 4000's session.
    log = load_log(_ratings(tmp_path), _mapping(session_gap_s=1000))
    sessions = {(e.user_id, e.epoch_seconds): e.session_id for e in log.events}
    assert [sessions[("1", t)] for t in (200.0, 1000.0, 4000.0)] == ["1#0", "1#0", "1#1"]
    assert [sessions[("2", t)] for t in (300.0, 1000.0, 9000.0)] == ["2#0", "2#0", "2#1"]


def test_a_rating_out_of_ten_is_rescaled_to_five_stars(tmp_path: Path) -> None:
    mapping = _mapping(value="rating", value_scale=10.0, default_type=EventType.RATE)
    log = load_log(_ratings(tmp_path), mapping)
    values = {(e.user_id, e.item_id): e.value for e in log.events}
    assert values[("2", "0004")] == pytest.approx(5.0)  # 10 of 10
    assert values[("1", "0001")] == pytest.approx(4.0)  # 8 of 10
    weights = {(e.user_id, e.item_id): event_weight(e) for e in log.events}
    assert weights[("2", "0002")] == pytest.approx(0.5)  # 7 of 10: a mild interest
    assert weights[("1", "0002")] == pytest.approx(-0.5)  # 5 of 10: counts against
    raw = load_log(_ratings(tmp_path), _mapping(value="rating"))
    assert {e.value for e in raw.events} == {8.0, 5.0, 9.0, 7.0, 10.0, 3.0}


def test_limit_keeps_the_earliest_events_not_the_first_lines(tmp_path: Path) -> None:
    log = load_log(_ratings(tmp_path), _mapping(), limit=2)
    assert [e.epoch_seconds for e in log.events] == [200.0, 300.0]


def test_an_item_file_becomes_the_catalog(tmp_path: Path) -> None:
    log = load_log(_ratings(tmp_path), _mapping(), items=_item_file(_movies(tmp_path)))
    # 0003 is rated but not in the item file: still replayed, without catalog text.
    assert "0003" in {e.item_id for e in log.events}
    assert set(log.catalog) == {"0001", "0002", "0004", "0099"}
    nation = log.catalog["0099"]  # in the catalog though nobody rated it
    assert nation.title == "The Birth of a Nation (1915)"
    assert nation.category == ["Drama"]  # the first genre
    assert nation.tags[:4] == ["drama", "history", "romance", "war"]  # every genre
    assert {"birth", "nation"} <= set(nation.tags)  # and the title's words
    assert log.catalog["0002"].title == "Fantômas - À l'ombre de la guillotine (1913)"
    assert log.catalog["0002"].category == ["Crime"]
    assert log.catalog["0004"].category == []  # no genres: no category
    assert log.catalog["0004"].tags == ["goha"]


def test_an_item_file_with_a_header_its_own_delimiter_and_key(tmp_path: Path) -> None:
    path = tmp_path / "films.csv"
    path.write_text('film,name,kinds\n0001,"The Bank, a comedy",Comedy;Short\n')
    items = ItemFile(path, key="film", title="name", categories="kinds", categories_separator=";")
    [(item_id, item)] = read_items(items).items()
    assert item_id == "0001"
    assert item.title == "The Bank, a comedy"
    assert (item.category, item.tags[:2]) == (["Comedy"], ["comedy", "short"])


def test_titles_of_the_log_come_from_the_earliest_kept_event(tmp_path: Path) -> None:
    path = tmp_path / "clicks.csv"
    path.write_text("u,i,t,title\nu1,a,300,LATER NAME\nu1,a,100,FIRST NAME\nu2,b,900,BEE\n")
    mapping = CsvMapping(item="i", time="t", user="u", time_format="epoch", title="title")
    assert load_log(path, mapping).catalog["a"].title == "FIRST NAME"
    assert set(load_log(path, mapping, limit=2).catalog) == {"a"}  # b's event is cut


def test_a_wrong_number_of_fields_names_the_columns_option(tmp_path: Path) -> None:
    path = _ratings(tmp_path, "1::0001::8::1000\n1::0002::5\n")
    with pytest.raises(LogError, match=r"--columns: line 2 of ratings\.dat has 3 fields, but 4"):
        load_log(path, _mapping())
    with pytest.raises(LogError, match=r"is --delimiter ',' right\?"):
        load_log(path, _mapping(delimiter=","))
    movies = _movies(tmp_path, "0001::The Bank (1915)\n")
    with pytest.raises(LogError, match=r"--items-columns: line 1 of movies\.dat has 2 fields"):
        read_items(_item_file(movies))


def test_an_unknown_column_names_its_option(tmp_path: Path) -> None:
    path = _ratings(tmp_path)
    with pytest.raises(LogError, match="--value: no column 'score'; the log has user, item"):
        load_log(path, _mapping(value="score"))
    with pytest.raises(LogError, match="--item-title: no column 'name'"):
        read_items(_item_file(_movies(tmp_path), title="name"))
    with pytest.raises(LogError, match="--item-categories: no column 'genre'"):
        read_items(_item_file(_movies(tmp_path), categories="genre"))


def test_a_header_less_file_read_without_columns_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(LogError, match=r"--item: no column 'item'.*needs --columns\)"):
        load_log(_ratings(tmp_path), _mapping(columns=None))


def test_an_unreadable_value_is_counted_and_named(tmp_path: Path) -> None:
    path = _ratings(tmp_path, "1::0001::8::1000\n1::0002::great::2000\n1::0003::::3000\n")
    log = load_log(path, _mapping(value="rating"))
    assert [e.item_id for e in log.events] == ["0001"]
    assert log.rows_invalid == 2
    assert log.first_error == "line 2: --value rating: 'great' is not a number"


def test_item_file_mistakes_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(LogError, match=r"--items .*absent\.dat: no such file"):
        read_items(_item_file(tmp_path / "absent.dat"))
    empty_key = _movies(tmp_path, "::Nameless (2000)::Drama\n")
    with pytest.raises(LogError, match="--item-key item: empty on line 1"):
        read_items(_item_file(empty_key))
    with pytest.raises(LogError, match="--items-delimiter: must not be empty"):
        read_items(_item_file(_movies(tmp_path), delimiter=""))

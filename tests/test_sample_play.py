"""The compose stack's one-shot producer puts the sample on the topics a worker reads."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from tests.helpers import TopicReader, body_of
from worker.config import Settings
from worker.sample import sample_catalog, sample_events
from worker.sample.play import main, play


@pytest.mark.integration
def test_play_sends_the_catalog_then_the_events_keyed_for_the_worker(
    settings: Settings, reader: Callable[[str], TopicReader]
) -> None:
    played = play(settings, rate=0, limit=40)

    assert (played.catalog, played.events) == (len(sample_catalog()), 40)
    catalog = reader(settings.catalog_topic).wait_for(lambda seen: len(seen) >= played.catalog)
    assert {(m.key() or b"").decode() for m in catalog} == {
        orjson.loads(line)["item_id"] for line in sample_catalog()
    }
    events = reader(settings.events_topic).wait_for(lambda seen: len(seen) >= 40)
    wanted = [orjson.loads(line) for line in sample_events()[:40]]
    assert sorted(body_of(m)["event_id"] for m in events) == sorted(e["event_id"] for e in wanted)
    assert all((m.key() or b"").decode() == body_of(m)["user_id"] for m in events)


@pytest.mark.integration
def test_play_paces_the_events(settings: Settings) -> None:
    assert play(settings, rate=20, limit=10).seconds >= 9 / 20


def test_a_bad_setting_stops_the_player_with_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_BATCH_SIZE", "zero")
    assert main(["--limit", "1"]) == 2

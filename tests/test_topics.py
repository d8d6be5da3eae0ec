"""``tailor topics create`` and ``--check``: the topics a first run needs, from the settings.

Why: a worker started before its topics exist only logs "Subscribed topic not available"
until something creates them, and a topic made by hand with the wrong partitions or a
catalog that is not compacted fails much later and quietly (users moving between
partitions, catalog items expiring). The command must create exactly what the worker
relies on, twice without harm, and name every topic that is missing or differs.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka.cimpl import NewTopic

from worker import cli
from worker.config import ConfigError, Settings, load_settings
from worker.transport.kafka import describe_topics, make_admin
from worker.transport.topics import (
    COMPACT,
    DELETE,
    TopicFound,
    differences,
    model_topic,
    topic_specs,
)


def _fresh(kafka_bootstrap: str, **changes: object) -> Settings:
    """Settings on topics of their own that nobody has created yet."""
    return Settings(bootstrap_servers=kafka_bootstrap).in_namespace(
        uuid.uuid4().hex[:10], **changes
    )


def _tailor(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    """``tailor ARGS`` in this process, with ``settings`` as its environment."""
    monkeypatch.setattr(cli, "_setup_logging", lambda level: None)
    for name, value in settings.as_environment().items():
        monkeypatch.setenv(name, value)
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _line_of(out: str, topic: str) -> str:
    return next(line for line in out.splitlines() if line.split()[0] == topic)


# -- the specs, without a broker ------------------------------------------------------------


def test_specs_follow_the_settings() -> None:
    settings = Settings(topic_partitions=12, topic_retention_s=86_400, dlq_retention_s=7200)
    specs = {spec.name: spec for spec in topic_specs(settings)}
    assert list(specs) == [
        "tailor.events",
        "tailor.catalog",
        "tailor.recommendations",
        "tailor.events.dlq",
        "tailor.model",
    ]
    assert specs["tailor.events"].partitions == specs["tailor.recommendations"].partitions == 12
    assert specs["tailor.events"].config() == {"cleanup.policy": DELETE, "retention.ms": "86400000"}
    assert specs["tailor.catalog"].config() == {"cleanup.policy": COMPACT}
    assert specs["tailor.events.dlq"].config()["retention.ms"] == "7200000"
    assert specs["tailor.model"] == model_topic(settings)
    assert specs["tailor.model"].partitions == 1
    assert specs["tailor.model"].cleanup_policy == DELETE  # key = writer: compaction drops deltas
    assert {spec.replication for spec in specs.values()} == {None}  # the broker's default


def test_differences_name_partitions_and_cleanup_policy_only() -> None:
    settings = Settings(topic_partitions=6)
    events, catalog, _, dlq, model = topic_specs(settings)
    assert differences(events, None) == ["missing"]
    assert differences(events, TopicFound(6, "delete", 1)) == []  # retention is the operator's
    assert differences(events, TopicFound(4, "delete", None)) == [
        "4 partitions, the settings say 6"
    ]
    assert differences(model, TopicFound(3, "compact", None)) == [
        "3 partitions, the settings say 1",
        "cleanup.policy=compact, Tailor needs delete",
    ]
    assert differences(catalog, TopicFound(3, "compact", None)) == []  # any count works
    assert differences(catalog, TopicFound(1, "compact,delete", None)) == [
        "cleanup.policy=compact,delete, Tailor needs compact"
    ]
    assert differences(dlq, TopicFound(5, "delete", None)) == []


def test_what_is_printed_of_a_topic() -> None:
    events, catalog, *_ = topic_specs(Settings(topic_partitions=1))
    assert events.describe() == "1 partition, cleanup.policy=delete, retention 7 d"
    assert catalog.describe() == "1 partition, cleanup.policy=compact"
    assert (
        TopicFound(3, "compact", 604_800_000).describe() == "3 partitions, cleanup.policy=compact"
    )
    assert TopicFound(2, "delete", -1).describe() == (
        "2 partitions, cleanup.policy=delete, retention unlimited"
    )
    assert TopicFound(2, "delete", 5_400_000).describe().endswith("retention 5400 s")


def test_topic_settings_are_validated() -> None:
    bad: dict[str, int] = {"topic_partitions": 0, "topic_replication": 0, "topic_retention_s": 60}
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=f"TAILOR_{name.upper()}"):
            load_settings(None, **{name: value})


def test_an_unreachable_kafka_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    status, _, err = _tailor(settings, monkeypatch, capsys, "topics", "create", "--timeout", "1")
    assert status == 1
    assert err.startswith("tailor topics: cannot reach Kafka at 127.0.0.1:1")
    assert len(err.strip().splitlines()) == 1


# -- against the real broker ----------------------------------------------------------------


@pytest.mark.integration
def test_create_makes_every_topic_once_and_check_passes(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _fresh(kafka_bootstrap, topic_partitions=3, dlq_retention_s=7200)
    names = [spec.name for spec in topic_specs(settings)]

    status, out, err = _tailor(settings, monkeypatch, capsys, "topics", "create")
    assert status == 0, err
    assert [line.split()[0] for line in out.splitlines()] == names
    assert all(line.split()[1] == "created:" for line in out.splitlines()), out

    status, out, err = _tailor(settings, monkeypatch, capsys, "topics", "create")
    assert status == 0, err
    assert all(line.split()[1] == "ok:" for line in out.splitlines()), out

    status, out, err = _tailor(settings, monkeypatch, capsys, "topics", "create", "--check")
    assert (status, err) == (0, "")
    assert _line_of(out, settings.events_topic).endswith(
        "ok: 3 partitions, cleanup.policy=delete, retention 7 d"
    )

    found = describe_topics(settings)
    assert found[settings.events_topic].partitions == 3
    assert found[settings.recommendations_topic].partitions == 3
    assert found[settings.catalog_topic].cleanup_policy == COMPACT
    assert found[settings.model_topic].partitions == 1
    assert found[settings.dlq_topic].retention_ms == 7_200_000


@pytest.mark.integration
def test_check_names_every_topic_missing_or_different_and_creates_nothing(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _fresh(kafka_bootstrap, topic_partitions=3)
    admin = make_admin(settings)
    made_by_hand = [
        NewTopic(settings.events_topic, 2, 1),  # the settings say 3
        NewTopic(settings.catalog_topic, 1, 1),  # not compacted
    ]
    for future in admin.create_topics(made_by_hand).values():
        future.result(timeout=30)

    status, out, err = _tailor(settings, monkeypatch, capsys, "topics", "create", "--check")
    assert status == 1
    assert _line_of(out, settings.events_topic).endswith(
        "differs: 2 partitions, the settings say 3"
    )
    assert _line_of(out, settings.catalog_topic).endswith(
        "differs: cleanup.policy=delete, Tailor needs compact"
    )
    for missing in (settings.recommendations_topic, settings.dlq_topic, settings.model_topic):
        assert _line_of(out, missing).endswith("missing")
    assert err.strip() == (
        "tailor topics: 5 topic(s) missing or different: "
        + ", ".join(spec.name for spec in topic_specs(settings))
    )
    assert set(describe_topics(settings)) == {settings.events_topic, settings.catalog_topic}

    # create makes the missing ones and leaves the existing ones as they were
    status, out, err = _tailor(settings, monkeypatch, capsys, "topics", "create")
    assert status == 1
    assert err.strip() == (
        "tailor topics: 2 topic(s) different (never changed here): "
        f"{settings.events_topic}, {settings.catalog_topic}"
    )
    found = describe_topics(settings)
    assert len(found) == 5
    assert found[settings.events_topic].partitions == 2
    assert found[settings.catalog_topic].cleanup_policy == DELETE

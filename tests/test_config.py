"""Settings: defaults, TAILOR_* environment variables, --config files, and error messages.

Why: an operator who mistypes a setting must get one line naming the variable they
typed, not a pydantic traceback; secrets must never reach logs or ``tailor config``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from worker import cli
from worker.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TAILOR_* variable of the developer's shell, and no stray files in the cwd."""
    for name in list(os.environ):
        if name.upper().startswith("TAILOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def _config_error(**env: str) -> str:
    mp = pytest.MonkeyPatch()
    try:
        for name, value in env.items():
            mp.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
        return str(caught.value)
    finally:
        mp.undo()


def test_defaults_load() -> None:
    settings = load_settings()
    assert settings.top_k == 20
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.redis_url.startswith("redis://")
    assert settings.events_topic == "tailor.events"
    assert settings.kafka_security_protocol == "PLAINTEXT"
    assert settings.redis_password is None


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_TOP_K", "5")
    monkeypatch.setenv("TAILOR_EVENTS_TOPIC", "clicks")
    monkeypatch.setenv("TAILOR_DENY_CATEGORIES", '["adult", "weapons"]')
    settings = load_settings()
    assert settings.top_k == 5
    assert settings.events_topic == "clicks"
    assert settings.deny_categories == ["adult", "weapons"]


def test_empty_environment_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_TOP_K", "")
    assert load_settings().top_k == 20


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.top_k = 3  # type: ignore[misc]


def test_with_overrides_validates() -> None:
    settings = load_settings().with_overrides(top_k=3)
    assert settings.top_k == 3
    with pytest.raises(ValueError, match="top_k"):
        load_settings().with_overrides(top_k=0)


def test_toml_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tailor.toml"
    path.write_text(
        'top_k = 7\nevents_topic = "from-toml"\n\n[kafka_extra]\n"fetch.wait.max.ms" = "10"\n'
    )
    settings = load_settings(path)
    assert settings.top_k == 7
    assert settings.events_topic == "from-toml"
    assert settings.kafka_extra == {"fetch.wait.max.ms": "10"}


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_is_read(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tailor{suffix}"
    path.write_text("top_k: 9\nevents_topic: from-yaml\ndeny_categories: [adult]\n")
    settings = load_settings(path)
    assert settings.top_k == 9
    assert settings.events_topic == "from-yaml"
    assert settings.deny_categories == ["adult"]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("tailor.toml", 'top_k = 7\ngroup_id = "g-file"\n'),
        ("tailor.yaml", "top_k: 7\ngroup_id: g-file\n"),
    ],
)
def test_environment_wins_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setenv("TAILOR_TOP_K", "5")
    settings = load_settings(path)
    assert settings.top_k == 5
    assert settings.group_id == "g-file"  # the file still supplies what env does not


def test_explicit_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_TOP_K", "5")
    assert load_settings(top_k=11).top_k == 11


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TAILOR_TOP_K", "0"),
        ("TAILOR_TOP_K", "many"),
        ("TAILOR_REDIS_URL", "http://localhost:6379"),
        ("TAILOR_BOOTSTRAP_SERVERS", "localhost"),
        ("TAILOR_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2"),
        ("TAILOR_KAFKA_SECURITY_PROTOCOL", "CARRIER_PIGEON"),
        ("TAILOR_EXPLORE_SHARE", "1.5"),
        ("TAILOR_REDIS_KEY_PREFIX", "has space"),
        ("TAILOR_LOG_LEVEL", "CHATTY"),
        ("TAILOR_METRICS_PORT", "70000"),
        # the limits on bad input: none can be switched off or raised past the contract
        ("TAILOR_MAX_MESSAGE_BYTES", "100"),
        ("TAILOR_MAX_MESSAGE_BYTES", "1000000000"),
        ("TAILOR_MAX_ID_LENGTH", "129"),
        ("TAILOR_MAX_ID_LENGTH", "0"),
        ("TAILOR_RECENT_WINDOW", "0"),
        ("TAILOR_RECENT_WINDOW", "1000000"),
        ("TAILOR_MIN_EVENT_TIME", "2000-01-01T00:00:00"),
        ("TAILOR_MIN_EVENT_TIME", "someday"),
        ("TAILOR_DEDUP_WINDOW", "-1"),
    ],
)
def test_bad_value_names_the_variable(variable: str, value: str) -> None:
    message = _config_error(**{variable: value})
    assert variable in message
    assert "\n" not in message


def test_several_bad_values_are_all_named() -> None:
    message = _config_error(TAILOR_TOP_K="0", TAILOR_REDIS_URL="http://x")
    assert "TAILOR_TOP_K" in message
    assert "TAILOR_REDIS_URL" in message


def test_sasl_protocol_without_mechanism_rejected() -> None:
    message = _config_error(TAILOR_KAFKA_SECURITY_PROTOCOL="SASL_SSL")
    assert "kafka_sasl_mechanism" in message.lower()


def test_sasl_mechanism_without_credentials_rejected() -> None:
    message = _config_error(
        TAILOR_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        TAILOR_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        TAILOR_KAFKA_SASL_USERNAME="svc",
    )
    assert "kafka_sasl_password" in message.lower()


def test_sasl_with_credentials_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TAILOR_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("TAILOR_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("TAILOR_KAFKA_SASL_PASSWORD", "pw")
    settings = load_settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == "pw"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"TAILOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "TAILOR_KAFKA_SASL_MECHANISM"),
        (
            {"TAILOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "TAILOR_KAFKA_SASL_MECHANISM": "PLAIN"},
            "TAILOR_KAFKA_SASL_PASSWORD",
        ),
    ],
)
def test_sasl_errors_name_the_environment_variable(env: dict[str, str], variable: str) -> None:
    assert variable in _config_error(**env)


def test_bad_value_in_file_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "tailor.toml"
    path.write_text("top_k = 0\n")
    with pytest.raises(ConfigError, match="TAILOR_TOP_K"):
        load_settings(path)


def test_unknown_setting_in_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tailor.yaml"
    path.write_text("top_kk: 5\n")
    with pytest.raises(ConfigError, match="TAILOR_TOP_KK"):
        load_settings(path)


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="--config") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["tailor.ini", "tailor.json", "tailor"])
def test_unsupported_config_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("top_k = 5\n")
    with pytest.raises(ConfigError, match="--config") as caught:
        load_settings(path)
    assert ".toml" in str(caught.value)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_REDIS_PASSWORD", "hunter2-redis")
    monkeypatch.setenv("TAILOR_KAFKA_SSL_KEY_PASSWORD", "hunter2-key")
    settings = load_settings()
    assert isinstance(settings.redis_password, SecretStr)
    assert isinstance(settings.kafka_ssl_key_password, SecretStr)
    assert settings.redis_password.get_secret_value() == "hunter2-redis"
    for shown in (repr(settings), str(settings), str(settings.model_dump())):
        assert "hunter2" not in shown


def test_cli_config_with_bad_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TAILOR_TOP_K", "0")
    assert cli.main(["config"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "TAILOR_TOP_K" in lines[0]
    assert lines[0].startswith("tailor:")
    assert "Traceback" not in captured.err


def test_cli_config_with_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--config", str(tmp_path / "nope.yaml"), "config"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "--config" in lines[0]


def test_cli_config_shows_settings_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_setup_logging", lambda level: None)
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("TAILOR_TOP_K", "5")
    monkeypatch.setenv("TAILOR_REDIS_PASSWORD", "hunter2-redis")
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "TAILOR_TOP_K" in out
    assert "TAILOR_REDIS_PASSWORD" in out
    assert "hunter2" not in out


def test_settings_class_has_no_mutable_default_shared() -> None:
    first, second = Settings(), Settings()
    assert first.kafka_extra is not second.kafka_extra
    assert first.deny_categories is not second.deny_categories


def test_in_namespace_gives_topics_group_and_keys_of_its_own() -> None:
    base = Settings()
    once = base.in_namespace("a1b2c3d4e5")
    twice = once.in_namespace("bench-f6a7b8c9d0")
    for settings in (once, twice):
        assert _names(settings).isdisjoint(_names(base))
        assert len(settings.redis_key_prefix) <= 32
    assert twice.redis_key_prefix.endswith("bench-f6a7b8c9d0")
    assert twice.events_topic.endswith(".a1b2c3d4e5.bench-f6a7b8c9d0")


def _names(settings: Settings) -> set[str]:
    return {
        settings.events_topic,
        settings.catalog_topic,
        settings.recommendations_topic,
        settings.dlq_topic,
        settings.group_id,
        settings.redis_key_prefix,
    }


def test_as_environment_gives_the_same_settings_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here, only that it exists\n")
    settings = Settings(
        top_k=7,
        explore_share=0.125,
        kafka_extra={"fetch.wait.max.ms": "10", "socket.keepalive.enable": "true"},
        deny_categories=["adult", "weapons"],
        redis_password=SecretStr("hunter2-redis"),
        kafka_ssl_ca_location=ca,
        log_level="DEBUG",
    ).in_namespace("a1b2c3d4e5")
    environment = settings.as_environment()

    assert environment["TAILOR_REDIS_PASSWORD"] == "hunter2-redis"
    assert environment["TAILOR_KAFKA_EXTRA"].startswith("{")
    assert "TAILOR_REDIS_USERNAME" not in environment  # unset stays unset
    assert all(name.startswith("TAILOR_") for name in environment)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings


@pytest.mark.parametrize(
    "variable",
    [
        "TAILOR_REDIS_SSL_CA_CERTS",
        "TAILOR_KAFKA_SSL_CA_LOCATION",
        "TAILOR_KAFKA_SSL_CERTIFICATE_LOCATION",
        "TAILOR_KAFKA_SSL_KEY_LOCATION",
    ],
)
def test_a_missing_certificate_file_is_named_at_start_up(tmp_path: Path, variable: str) -> None:
    missing = str(tmp_path / "absent.pem")
    message = _config_error(TAILOR_REDIS_URL="rediss://redis:6380/0", **{variable: missing})
    assert f"{variable} (" in message
    assert "no such file" in message
    assert missing in message


def test_redis_tls_files_need_a_rediss_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("pem\n")
    message = _config_error(
        TAILOR_REDIS_URL="redis://redis:6379/0", TAILOR_REDIS_SSL_CA_CERTS=str(ca)
    )
    assert "TAILOR_REDIS_SSL_CA_CERTS needs a rediss:// TAILOR_REDIS_URL (got redis://)" in message


def test_redis_client_certificate_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "client.crt"
    cert.write_text("pem\n")
    message = _config_error(
        TAILOR_REDIS_URL="rediss://redis:6380/0", TAILOR_REDIS_SSL_CERTFILE=str(cert)
    )
    assert "TAILOR_REDIS_SSL_CERTFILE and TAILOR_REDIS_SSL_KEYFILE go together" in message


def test_redis_tls_settings_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_text("pem\n")
    monkeypatch.setenv("TAILOR_REDIS_URL", "rediss://redis:6380/0")
    monkeypatch.setenv("TAILOR_REDIS_SSL_CA_CERTS", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("TAILOR_REDIS_SSL_CERTFILE", str(tmp_path / "client.crt"))
    monkeypatch.setenv("TAILOR_REDIS_SSL_KEYFILE", str(tmp_path / "client.key"))
    settings = load_settings()
    assert settings.redis_ssl_ca_certs == tmp_path / "ca.crt"
    assert settings.redis_ssl_keyfile == tmp_path / "client.key"


@pytest.mark.parametrize(
    ("env", "cluster", "tls"),
    [
        ({"TAILOR_REDIS_URL": "redis://redis:6379/0"}, False, False),
        ({"TAILOR_REDIS_URL": "redis+cluster://node-1:7000"}, True, False),
        ({"TAILOR_REDIS_URL": "rediss+cluster://node-1:7000/0"}, True, True),
        ({"TAILOR_REDIS_URL": "redis://node-1:7000", "TAILOR_REDIS_CLUSTER": "true"}, True, False),
        ({"TAILOR_REDIS_URL": "rediss://node-1:7000", "TAILOR_REDIS_CLUSTER": "1"}, True, True),
    ],
)
def test_the_url_scheme_or_the_setting_selects_a_redis_cluster(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], cluster: bool, tls: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.redis_is_cluster, settings.redis_tls) == (cluster, tls)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"TAILOR_REDIS_URL": "unix:///run/redis.sock", "TAILOR_REDIS_CLUSTER": "true"},
            "TAILOR_REDIS_CLUSTER needs a redis:// or rediss:// TAILOR_REDIS_URL (got unix://",
        ),
        (
            {"TAILOR_REDIS_URL": "redis+cluster://node-1:7000/3"},
            "TAILOR_REDIS_URL names database '3', but a Redis Cluster has only database 0",
        ),
        (
            {"TAILOR_REDIS_URL": "redis://node-1:7000/2", "TAILOR_REDIS_CLUSTER": "true"},
            "TAILOR_REDIS_URL names database '2'",
        ),
        ({"TAILOR_REDIS_URL": "redis+sentinel://node-1:7000"}, "TAILOR_REDIS_URL (redis_url)"),
    ],
)
def test_a_bad_cluster_setting_is_refused_naming_it(env: dict[str, str], expected: str) -> None:
    assert expected in _config_error(**env)


def test_redis_tls_files_go_with_rediss_cluster_urls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("pem\n")
    message = _config_error(
        TAILOR_REDIS_URL="redis+cluster://node-1:7000", TAILOR_REDIS_SSL_CA_CERTS=str(ca)
    )
    assert "needs a rediss:// TAILOR_REDIS_URL (got redis+cluster://)" in message
    settings = Settings(redis_url="rediss+cluster://node-1:7000", redis_ssl_ca_certs=ca)
    assert settings.redis_tls
    assert settings.redis_is_cluster

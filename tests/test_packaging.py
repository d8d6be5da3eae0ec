"""What a runtime-only install can do: ``tailor run`` and the operator commands, and a
clear line naming the extra for the rest.

Why: the image installs the package without extras. A module on the path of ``tailor run``
that imports an extra's package at module level would only show up there, as a traceback
at start-up; these tests hide the extras' packages from a fresh interpreter instead
(``sys.modules[name] = None`` makes both ``import`` and ``find_spec`` miss them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from worker.extras import DISTRIBUTION, EXTRAS

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

#: Every top-level module that some extra provides (and the runtime must not need).
EXTRA_MODULES = sorted(
    {module for extra in EXTRAS.values() for module in extra.modules} | {"jax", "optax"}
)

_WITHOUT_EXTRAS = f"""
import sys
for name in {EXTRA_MODULES!r}:
    sys.modules[name] = None
{{body}}
"""


def _without_extras(body: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS.format(body=body), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tailor_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return _without_extras(
        "from worker.cli import main\nraise SystemExit(main(sys.argv[1:]))", *args
    )


def _requirement_name(requirement: str) -> str:
    """``fakeredis[lua]>=2.26,<3`` -> ``fakeredis``."""
    for stop in "[<>=!~; ":
        requirement = requirement.split(stop, 1)[0]
    return requirement.lower().replace("_", "-")


def test_the_worker_imports_without_any_extra() -> None:
    done = _without_extras(
        "import worker.cli, worker.loop, worker.metrics, worker.transport.kafka\n"
        "import worker.transport.model_log, worker.state.store, worker.sync.checkpoint\n"
        "print('imported')"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "imported"


@pytest.mark.parametrize(
    "command",
    [["run", "--help"], ["topics", "create", "--help"], ["config"], ["schemas", "--help"]],
)
def test_runtime_commands_work_without_any_extra(command: list[str]) -> None:
    done = _tailor_without_extras(*command)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["demo"], "demo"),
        (["bench", "core", "--events", "10"], "bench"),
        (["evaluate", "log.csv", "--user", "u"], "evaluate"),
        (["evaluate", "--help"], "evaluate"),
        (["serve", "--port", "0"], "serve"),
        (["serve", "--help"], "serve"),
    ],
)
def test_a_command_without_its_extra_names_the_extra(command: list[str], extra: str) -> None:
    done = _tailor_without_extras(*command)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tailor {command[0]} needs the {extra} extra: pip install "
        f"'{DISTRIBUTION}[{extra}]' (missing: {', '.join(EXTRAS[command[0]].modules)})"
    ]


def test_the_extras_named_by_the_cli_exist_and_provide_its_modules() -> None:
    assert PYPROJECT["name"] == DISTRIBUTION
    declared = PYPROJECT["optional-dependencies"]
    for command, extra in EXTRAS.items():
        provided = {_requirement_name(r) for r in declared[extra.name]}
        assert set(extra.modules) <= provided, (command, extra)


def test_the_runtime_dependencies_hold_no_extra_package() -> None:
    runtime = {_requirement_name(r) for r in PYPROJECT["dependencies"]}
    assert runtime.isdisjoint(EXTRA_MODULES), runtime & set(EXTRA_MODULES)
    assert {"confluent-kafka", "redis", "river", "prometheus-client"} <= runtime


def test_the_dev_extra_pulls_in_every_other_extra_the_tests_need() -> None:
    dev = PYPROJECT["optional-dependencies"]["dev"]
    wanted = {extra.name for extra in EXTRAS.values()}
    pulled = {
        name
        for requirement in dev
        if requirement.startswith(f"{DISTRIBUTION}[")
        for name in requirement.split("[", 1)[1].rstrip("]").split(",")
    }
    assert wanted <= pulled

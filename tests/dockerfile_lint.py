"""A small Dockerfile linter for the worker image, on BuildKit's own parser.

Why not hadolint: it is on none of the registries this project may use. The ``dockerfile``
package (PyPI) wraps the Go parser that ``docker build`` uses, so what parses here parses
there; the rules below are the hadolint rules that matter for this image, plus the two
the deployment relies on: the final stage runs as a numeric non-root user (Kubernetes'
``runAsNonRoot`` can only verify a number) and carries no build tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import dockerfile

__all__ = ["Stage", "lint", "stages"]

_INSTALLS = re.compile(
    r"\b(apt-get\s+install|apt\s+install|apk\s+add|dnf\s+install|yum\s+install|"
    r"microdnf\s+install|pip3?\s+install|uv\s+pip\s+install|poetry\s+install)\b"
)
_BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|cmake|build-essential|cargo|rustc|go\s+build|[\w.+-]+-dev)\b"
)
# Official images whose default tags carry compilers (buildpack-deps underneath).
_FULL_LANGUAGE_IMAGES = frozenset({"python", "node", "ruby", "perl", "php", "openjdk"})
_BUILD_IMAGES = frozenset({"gcc", "golang", "rust", "buildpack-deps", "maven", "gradle"})


@dataclass
class Stage:
    """One ``FROM`` and the instructions up to the next."""

    image: str
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)


def stages(commands: tuple[dockerfile.Command, ...]) -> list[Stage]:
    found: list[Stage] = []
    for command in commands:
        if command.cmd == "FROM":
            args = [a for a in command.value if not a.startswith("--")]
            name = args[2] if len(args) >= 3 and args[1].upper() == "AS" else None
            found.append(Stage(args[0], name))
        elif found:
            found[-1].commands.append(command)
    return found


def lint(text: str) -> list[str]:
    """Every problem found, as ``line N: what``; empty when the Dockerfile is clean."""
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as error:
        return [f"does not parse: {error}"]
    problems = [
        f"line {c.start_line}: unknown instruction {c.cmd}"
        for c in commands
        if c.cmd.lower() not in dockerfile.all_cmds()
    ]
    built = stages(commands)
    if not built:
        return [*problems, "no FROM"]
    names: list[str] = []
    for stage in built:
        problems += _base_image(stage, names)
        problems += _each_stage(stage, names)
        if stage.name:
            names.append(stage.name)
    problems += _final_stage(built[-1])
    return problems


def _split_image(image: str) -> tuple[str, str]:
    """``registry:5000/team/python:3.11-slim@sha256:...`` -> (``.../python``, ``3.11-slim``)."""
    reference = image.split("@", 1)[0]
    repository, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:
        return reference, ""
    return repository, tag


def _base_image(stage: Stage, earlier: list[str]) -> list[str]:
    if stage.image in earlier or stage.image == "scratch" or "@sha256:" in stage.image:
        return []
    if _split_image(stage.image)[1] in ("", "latest"):
        return [f"FROM {stage.image}: pin a tag (not latest), so rebuilds get the same base"]
    return []


def _each_stage(stage: Stage, earlier: list[str]) -> list[str]:
    problems: list[str] = []
    env = {key for c in stage.commands if c.cmd == "ENV" for key in c.value[::2]}
    for command in stage.commands:
        where = f"line {command.start_line}"
        run = " ".join(command.value)
        remote = any(v.startswith(("http://", "https://")) for v in command.value[:-1])
        if command.cmd == "ADD" and not remote:
            problems.append(f"{where}: COPY, not ADD, for files of the build context")
        if command.cmd == "WORKDIR" and not command.value[0].startswith(("/", "$")):
            problems.append(f"{where}: WORKDIR {command.value[0]} should be absolute")
        if command.cmd == "COPY":
            for flag in command.flags:
                source = flag.removeprefix("--from=")
                if source != flag and source not in earlier and not source.isdigit():
                    problems.append(f"{where}: COPY --from={source} names no earlier stage")
        if command.cmd != "RUN":
            continue
        if re.search(r"apt-get\s+install", run) and "--no-install-recommends" not in run:
            problems.append(f"{where}: apt-get install without --no-install-recommends")
        cached = "--no-cache-dir" not in run and "PIP_NO_CACHE_DIR" not in env
        if re.search(r"\bpip3?\s+install", run) and cached:
            problems.append(f"{where}: pip install keeps its cache (--no-cache-dir)")
    return problems


def _final_stage(stage: Stage) -> list[str]:
    problems: list[str] = []
    repository, tag = _split_image(stage.image)
    short = repository.rsplit("/", 1)[-1]
    if short in _BUILD_IMAGES or (
        short in _FULL_LANGUAGE_IMAGES and not re.search(r"slim|alpine|distroless", tag)
    ):
        problems.append(f"final stage FROM {stage.image}: a build image (it ships compilers)")
    for command in stage.commands:
        if command.cmd != "RUN":
            continue
        run = " ".join(command.value)
        if _INSTALLS.search(run) or _BUILD_TOOLS.search(run):
            problems.append(
                f"line {command.start_line}: final stage installs or builds "
                f"({run[:60]}); do it in a build stage and copy the result"
            )
    users = [c for c in stage.commands if c.cmd == "USER"]
    if not users:
        problems.append("final stage runs as root: no USER")
    else:
        user = users[-1].value[0].split(":")[0]
        if not user.isdigit():
            problems.append(f"USER {user}: use a numeric uid (runAsNonRoot checks numbers)")
        elif int(user) == 0:
            problems.append("USER 0: the final stage runs as root")
    for command in stage.commands:
        if command.cmd in ("ENTRYPOINT", "CMD") and not command.json:
            problems.append(
                f"line {command.start_line}: {command.cmd} in shell form: the process is "
                "then a child of /bin/sh and never sees SIGTERM; use the JSON form"
            )
    return problems

"""Which optional extra each ``tailor`` command needs, and what to say when it is missing.

The package installs only what ``tailor run`` needs (the image has nothing more); the
demo, the benchmarks and the evaluation pull in packages a production worker has no use
for, so they live in extras of ``pyproject.toml``. Without this check a runtime-only
install would meet them as a ``ModuleNotFoundError`` traceback, or worse, after an hour of
``tailor evaluate`` when ``--plot`` finally imports matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.util import find_spec

__all__ = ["DISTRIBUTION", "EXTRAS", "Extra", "missing_extra"]

#: The distribution name ``pip install`` knows the package by.
DISTRIBUTION = "tailor-worker"


@dataclass(frozen=True, slots=True)
class Extra:
    """An extra of ``pyproject.toml`` and the top-level modules a command imports from it."""

    name: str
    modules: tuple[str, ...]


#: Command -> the extra it needs. Commands not named here need the runtime alone.
EXTRAS: dict[str, Extra] = {
    "demo": Extra("demo", ("rich", "fakeredis")),
    "bench": Extra("bench", ("rich",)),
    "evaluate": Extra("evaluate", ("rich", "implicit", "matplotlib")),
    "serve": Extra("serve", ("fastapi", "uvicorn")),
    "report": Extra("report", ("rich", "matplotlib")),
}


def missing_extra(command: str) -> str | None:
    """The one line to print when ``command`` cannot run here, or None when it can.

    ``find_spec`` looks the modules up without importing them, so the check costs
    nothing and imports none of their side effects.
    """
    extra = EXTRAS.get(command)
    if extra is None:
        return None
    missing = [module for module in extra.modules if find_spec(module) is None]
    if not missing:
        return None
    return (
        f"tailor {command} needs the {extra.name} extra: "
        f"pip install '{DISTRIBUTION}[{extra.name}]' (missing: {', '.join(missing)})"
    )

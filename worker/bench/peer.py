"""The peer's own virtual environment: ``bench/peer`` installed apart from the worker.

quixstreams 3.x pins confluent-kafka<2.13 and pydantic<2.14, and the worker needs
confluent-kafka>=2.16, so the peer cannot be installed beside Tailor. It is a tiny
project of its own (``bench/peer/pyproject.toml``, ``bench/peer/peer_app.py``) that the
benchmark installs with ``python -m venv`` and pip from PyPI on first use, and reuses
while its ``pyproject.toml`` is unchanged (a stamp file holds its hash).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from worker.bench.common import BenchError

__all__ = ["PEER_APP", "PEER_PROJECT", "default_peer_venv", "ensure_peer_venv"]

_CHECKOUT = Path(__file__).resolve().parents[2]  # worker/bench/peer.py -> the checkout
PEER_PROJECT = _CHECKOUT / "bench" / "peer"
PEER_APP = PEER_PROJECT / "peer_app.py"
_STAMP = ".tailor-peer-stamp"


def default_peer_venv() -> Path:
    """``.tailor/peer-venv`` in the checkout, beside what ``make up`` keeps there."""
    return _CHECKOUT / ".tailor" / "peer-venv"


def ensure_peer_venv(venv: Path, log: Callable[[str], object] = print) -> Path:
    """The peer venv's Python, creating or refreshing the venv when needed."""
    if not PEER_APP.is_file():
        raise BenchError(
            f"the peer's project is not at {PEER_PROJECT}: `tailor bench` runs it from a "
            "clone of the repository"
        )
    wanted = hashlib.sha256((PEER_PROJECT / "pyproject.toml").read_bytes()).hexdigest()
    python = venv / "bin" / "python"
    stamp = venv / _STAMP
    if python.exists() and stamp.is_file() and stamp.read_text().strip() == wanted:
        return python
    log(f"installing the peer (quixstreams, river) into {venv} from PyPI")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--quiet", str(PEER_PROJECT)],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.SubprocessError) as error:
            raise BenchError(f"cannot install the peer ({' '.join(step)}): {error}") from error
        if done.returncode != 0:
            raise BenchError(
                f"cannot install the peer: `{' '.join(step)}` exited with "
                f"{done.returncode}:\n{(done.stderr or done.stdout)[-2000:]}"
            )
    stamp.write_text(wanted + "\n")
    return python

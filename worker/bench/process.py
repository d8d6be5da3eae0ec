"""A benchmarked system's process: spawned with an environment of its own, its log read
by a thread (so the pipe never fills) and its last lines kept for error messages."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections import deque
from collections.abc import Sequence

from worker.bench.common import BenchError

__all__ = ["LoggedProcess"]

_STOP_S = 60.0  # how long a process has to stop after SIGTERM before it is killed


class LoggedProcess:
    def __init__(
        self,
        command: Sequence[str],
        environment: dict[str, str],
        name: str,
        tail_lines: int = 40,
    ) -> None:
        self.name = name
        self.exit_code: int | None = None
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._lock = threading.Lock()
        try:
            self.process = subprocess.Popen(
                list(command),
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        except OSError as error:
            raise BenchError(f"cannot start the {name} ({' '.join(command)}): {error}") from error
        self._reader = threading.Thread(target=self._read, name=f"log of {name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def on_line(self, line: str) -> None:
        """Called, under the lock, for every line of the log (subclasses watch for some)."""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._tail.append(line.rstrip("\n"))
                self.on_line(line)

    def log_tail(self) -> str:
        self._reader.join(1)  # the last lines of a process that has exited
        with self._lock:
            return "\n".join(self._tail) or "(nothing)"

    def check(self) -> None:
        """Raise :class:`BenchError` with the end of the log if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(
                f"the {self.name} exited with status {code}; its log ends with:\n{self.log_tail()}"
            )

    def stop(self) -> int:
        """SIGTERM, as operators stop it, killed after ``_STOP_S``; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            with self._lock:
                self._tail.append(f"(killed: still running {_STOP_S:.0f} s after SIGTERM)")
        self._reader.join(5)
        self.exit_code = code
        return code

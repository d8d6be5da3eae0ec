"""``tailor bench``: how fast Tailor is, shown by measurements that are printed, never asserted.

Every part plays one seeded synthetic clickstream (:mod:`.synthetic`):

- :mod:`.core` feeds the recommender core alone (no Kafka, no Redis), batch by batch,
  keeping user states in a dict the way the worker keeps them in Redis;
- :mod:`.worker` runs the real worker (``tailor run``, a process of its own) on the Kafka
  and Redis of the settings, on fresh topics and keys: how fast it drains a backlog and
  the latency from an event's send to the list that covers it;
- :mod:`.sidebyside` (``tailor bench`` without a part) runs the core, Tailor, the peer
  (:mod:`.peer`: the same job as a Quix Streams + River app in a venv of its own) and a
  bare relay (:mod:`.relay_app`) on the same events, measured from outside the same way
  (:mod:`.procstat` for CPU and memory).

Each returns a plain dict (what ``--json`` writes); :mod:`.report` shows it, with the
machine and commit it ran on. :mod:`.common` holds what they share.
"""

from __future__ import annotations

from worker.bench.common import BenchError
from worker.bench.core import CoreOptions, run_core
from worker.bench.report import machine_info, print_report, write_json
from worker.bench.sidebyside import SYSTEMS, SideOptions, run_side_by_side
from worker.bench.synthetic import Clickstream, Workload
from worker.bench.worker import WorkerOptions, run_worker

__all__ = [
    "SYSTEMS",
    "BenchError",
    "Clickstream",
    "CoreOptions",
    "SideOptions",
    "WorkerOptions",
    "Workload",
    "machine_info",
    "print_report",
    "run_core",
    "run_side_by_side",
    "run_worker",
    "write_json",
]

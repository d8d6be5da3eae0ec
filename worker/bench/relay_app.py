"""The ceiling of ``tailor bench``: a bare relay that consumes, produces the same bytes, commits.

Nothing is parsed, looked up or learned: what Kafka and one Python process cost per event
on this machine, so that Tailor's throughput can be read as a fraction of it. The loop is
the worker's own shape (``consume(1000, 0.005)``, produce every message, wait for the
acknowledgements, commit the batch), with the worker's latency-minded fetch wait.

The benchmark runs this file by its path (``python relay_app.py ...``), not as
``worker.bench.relay_app``, so that the process imports confluent-kafka alone and its
CPU and memory are the relay's, not those of Tailor's package.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from confluent_kafka import Consumer, Producer

__all__ = ["main", "relay"]


def relay(bootstrap: str, source: str, target: str, group: str, stop: threading.Event) -> int:
    """Copy ``source`` to ``target`` until ``stop``; the number of messages relayed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 10,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([source])
    relayed = 0
    try:
        while not stop.is_set():
            messages = consumer.consume(1000, 0.005)
            if not messages:
                continue
            for message in messages:
                if message.error() is not None:
                    continue
                while True:
                    try:
                        producer.produce(target, key=message.key(), value=message.value())
                        break
                    except BufferError:
                        producer.poll(0.01)
            producer.flush()
            consumer.commit(asynchronous=False)
            relayed += len(messages)
    finally:
        producer.flush(10)
        consumer.close()
    return relayed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("relay: consuming", flush=True)
    relay(args.bootstrap, args.source, args.target, args.group, stop)


if __name__ == "__main__":
    main()

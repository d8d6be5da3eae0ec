"""Rebuild the bundled sample from ``shared/data/online-retail.csv.gz``.

Run ``python -m worker.sample.build PATH/online-retail.csv.gz``; see README.md here for
what is kept and how it is converted.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import sys
from datetime import datetime
from pathlib import Path

import orjson

HERE = Path(__file__).parent
LAST_DAY = "2010-12-03"
_WORD = re.compile(r"[A-Za-z]{3,}")


def build(source: Path, last_day: str = LAST_DAY) -> tuple[int, int]:
    events: list[bytes] = []
    catalog: dict[str, bytes] = {}
    with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle)):
            if row["InvoiceDate"][:10] > last_day:
                break
            if not row["CustomerID"] or row["InvoiceNo"].startswith("C"):
                continue
            if float(row["Quantity"]) <= 0:
                continue
            item = row["StockCode"].strip()
            when = datetime.strptime(row["InvoiceDate"], "%Y-%m-%d %H:%M:%S")
            events.append(
                orjson.dumps(
                    {
                        "event_id": f"{row['InvoiceNo']}-{line}",
                        "user_id": f"c{row['CustomerID'].split('.')[0]}",
                        "item_id": item,
                        "type": "purchase",
                        "value": float(row["Quantity"]),
                        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "session_id": row["InvoiceNo"],
                        "context": {"country": row["Country"]},
                    }
                )
            )
            title = " ".join(row["Description"].split())
            catalog[item] = orjson.dumps(
                {
                    "item_id": item,
                    "title": title,
                    "tags": sorted({w.lower() for w in _WORD.findall(title)}),
                    "price": max(float(row["UnitPrice"]), 0.0),
                }
            )
    _write(HERE / "events.jsonl.gz", events)
    _write(HERE / "catalog.jsonl.gz", list(catalog.values()))
    return len(events), len(catalog)


def _write(path: Path, lines: list[bytes]) -> None:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
        handle.write(b"\n".join(lines) + b"\n")
    path.write_bytes(buffer.getvalue())


if __name__ == "__main__":
    counts = build(Path(sys.argv[1]))
    print(f"{counts[0]} events, {counts[1]} catalog items")

"""A small reader of Prometheus's HTTP API (``/api/v1/query`` and ``query_range``).

``tailor report`` asks a handful of instant and range queries; the API is plain JSON over
HTTP, so the standard library reads it and no client package is pulled in for it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["PrometheusApi", "PrometheusError", "RangeSeries", "Sample"]


class PrometheusError(RuntimeError):
    """Prometheus could not be reached, or refused a query (the message says which)."""


@dataclass(frozen=True, slots=True)
class Sample:
    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class RangeSeries:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (epoch seconds, value)


class PrometheusApi:
    def __init__(self, url: str, timeout_s: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """An instant vector; NaN values (0/0 ratios) are left out."""
        params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
        data = self._get("/api/v1/query", params)
        if data.get("resultType") != "vector":
            raise PrometheusError(
                f"expected a vector from {promql!r}, got {data.get('resultType')}"
            )
        samples = [Sample(item["metric"], float(item["value"][1])) for item in data["result"]]
        return [sample for sample in samples if sample.value == sample.value]

    def query_range(
        self, promql: str, start: float, end: float, step_s: float
    ) -> list[RangeSeries]:
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{max(step_s, 1.0):.0f}s",
        }
        data = self._get("/api/v1/query_range", params)
        return [
            RangeSeries(
                item["metric"],
                [(float(t), float(v)) for t, v in item["values"] if float(v) == float(v)],
            )
            for item in data["result"]
        ]

    def _get(self, path: str, params: dict[str, str]) -> Any:
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422: a bad query, with its reason
            try:
                reason = json.loads(error.read()).get("error", error.reason)
            except ValueError:
                reason = error.reason
            raise PrometheusError(f"Prometheus at {self.url} refused a query: {reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise PrometheusError(f"cannot read Prometheus at {self.url}: {error}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.url}: {body.get('error', body)}")
        return body["data"]

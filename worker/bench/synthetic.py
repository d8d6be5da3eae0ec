"""The seeded synthetic world both benchmarks play: a catalog and a clickstream.

Items belong to categories, item and user popularity are Zipf-like, users mostly stay
within a few favourite categories (so co-visitation has something to find), mostly views
and clicks with some carts and purchases, a handful of countries and devices, and event
time that moves forward. The same seed gives the same catalog and stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from worker.bench.common import Json

__all__ = ["CORE_START_S", "Clickstream", "Workload", "item_id", "user_id"]


IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
_EVENT_TYPE_SHARES = (0.70, 0.20, 0.07, 0.03)
_COUNTRIES = ("NL", "DE", "GB", "FR", "US", "ES", "IT", "PL")
_COUNTRY_SHARES = (0.25, 0.20, 0.15, 0.12, 0.10, 0.08, 0.06, 0.04)
_DEVICES = ("mobile", "web", "app")
_DEVICE_SHARES = (0.55, 0.35, 0.10)
_OTHER_DEVICE = 0.10  # share of a user's events on a device other than their usual one
_FAVOURITE_SHARES = (0.60, 0.25, 0.15)  # how a user's in-taste events split over categories
_IN_FAVOURITES = 0.85  # share of events inside the user's favourite categories
_ITEM_EXPONENT = 1.0  # Zipf-like: weight of the item of popularity rank r is 1 / r**s
_USER_EXPONENT = 0.6
_CATEGORY_EXPONENT = 0.8
_UNAVAILABLE = 0.02
_CATEGORIES_PER_DEPARTMENT = 25
_SESSION_S = 1800
_VOCABULARY = (
    "cotton linen wool silk velvet denim leather canvas bamboo ceramic glass steel copper "
    "oak walnut pine marble stone paper vintage modern classic rustic floral striped "
    "checked plain bright pastel dark light small large mini tall round square"
)
_WORDS = tuple(_VOCABULARY.split())  # title words: shared words give content neighbours
#: Event time of the core benchmark's first event: fixed, so runs repeat exactly.
CORE_START_S = 1_750_000_000.0


@dataclass(frozen=True, slots=True)
class Workload:
    """The shape of the synthetic world; the same seed gives the same catalog and stream."""

    items: int = 100_000
    categories: int = 500
    users: int = 50_000
    seed: int = 7
    mean_gap_s: float = 0.05  # event time between two events (exponential)

    def __post_init__(self) -> None:
        if min(self.items, self.categories, self.users) < 1:
            raise ValueError("items, categories and users must be at least 1")


def item_id(row: int) -> str:
    return f"i-{row}"


def user_id(index: int) -> str:
    return f"u-{index}"


class Clickstream:
    """A seeded synthetic catalog and interaction stream.

    :meth:`events` continues one stream: consecutive calls give consecutive events with
    distinct ids, so a warm-up, a measured part and a latency part are one story.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        rng = np.random.default_rng(workload.seed)
        self._rng = rng
        items, categories, users = workload.items, workload.categories, workload.users
        self.item_category: IntArray = rng.integers(0, categories, size=items, dtype=np.int64)
        item_weight = _zipf_weights(items, _ITEM_EXPONENT, rng)
        order = np.argsort(self.item_category, kind="stable")
        bounds = np.searchsorted(self.item_category[order], np.arange(categories + 1))
        self._members = [order[bounds[c] : bounds[c + 1]] for c in range(categories)]
        self._member_cdf = [np.cumsum(item_weight[members]) for members in self._members]
        self._item_cdf = np.cumsum(item_weight)
        category_weight = _zipf_weights(categories, _CATEGORY_EXPONENT, rng)
        self.favourites: IntArray = rng.choice(
            categories,
            size=(users, len(_FAVOURITE_SHARES)),
            p=category_weight / category_weight.sum(),
        )
        self._user_cdf = np.cumsum(_zipf_weights(users, _USER_EXPONENT, rng))
        self.user_country: IntArray = rng.choice(len(_COUNTRIES), size=users, p=_COUNTRY_SHARES)
        self.user_device: IntArray = rng.choice(len(_DEVICES), size=users, p=_DEVICE_SHARES)
        self.emitted = 0

    def catalog(self) -> Iterator[Json]:
        """Every item as the catalog topic carries it (category path: department, leaf)."""
        rng = np.random.default_rng([self.workload.seed, 1])  # apart from the event stream
        count = self.workload.items
        prices = np.round(rng.gamma(2.0, 15.0, size=count), 2)
        available = rng.random(count) >= _UNAVAILABLE
        words = rng.integers(0, len(_WORDS), size=(count, 2))
        tags = rng.integers(0, 5, size=count)
        for row in range(count):
            category = int(self.item_category[row])
            yield {
                "item_id": item_id(row),
                "title": f"{_WORDS[words[row, 0]]} {_WORDS[words[row, 1]]} {row}",
                "category": [
                    f"d-{category // _CATEGORIES_PER_DEPARTMENT}",
                    f"c-{category}",
                ],
                "tags": [f"t{category}-{tags[row]}"],
                "price": float(prices[row]),
                "available": bool(available[row]),
            }

    def events(self, count: int, *, start_s: float, id_prefix: str) -> list[Json]:
        """The next ``count`` events as frontends send them, event time from ``start_s``."""
        rng = self._rng
        users = _draw(self._user_cdf, rng.random(count))
        items = _draw(self._item_cdf, rng.random(count))
        which = rng.choice(len(_FAVOURITE_SHARES), size=count, p=_FAVOURITE_SHARES)
        in_taste = np.flatnonzero(rng.random(count) < _IN_FAVOURITES)
        categories = self.favourites[users[in_taste], which[in_taste]]
        by_category = np.argsort(categories, kind="stable")
        starts = np.searchsorted(categories[by_category], np.arange(self.workload.categories + 1))
        draws = rng.random(in_taste.size)
        for category in np.unique(categories):
            members = self._members[category]
            if members.size == 0:
                continue  # an empty category: the global draw stands
            chosen = by_category[starts[category] : starts[category + 1]]
            items[in_taste[chosen]] = members[_draw(self._member_cdf[category], draws[chosen])]
        kinds = rng.choice(len(_EVENT_TYPES), size=count, p=_EVENT_TYPE_SHARES)
        devices = np.where(
            rng.random(count) < _OTHER_DEVICE,
            rng.integers(0, len(_DEVICES), size=count),
            self.user_device[users],
        )
        times = start_s + np.cumsum(rng.exponential(self.workload.mean_gap_s, size=count))
        bodies: list[Json] = []
        for k in range(count):
            user = int(users[k])
            moment = float(times[k])
            bodies.append(
                {
                    "schema_version": 1,
                    "event_id": f"{id_prefix}{self.emitted + k}",
                    "user_id": user_id(user),
                    "item_id": item_id(int(items[k])),
                    "type": _EVENT_TYPES[kinds[k]],
                    "timestamp": int(moment * 1000),
                    "session_id": f"s-{user}-{int(moment // _SESSION_S)}",
                    "context": {
                        "device": _DEVICES[devices[k]],
                        "country": _COUNTRIES[self.user_country[user]],
                    },
                }
            )
        self.emitted += count
        return bodies


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> FloatArray:
    """Weights 1 / rank**s, with the ranks shuffled over the n positions."""
    ranks = rng.permutation(n) + 1
    weights: FloatArray = 1.0 / ranks.astype(np.float64) ** exponent
    return weights


def _draw(cdf: FloatArray, uniform: FloatArray) -> IntArray:
    """Positions drawn in proportion to the weights whose running sum is ``cdf``."""
    picks = np.searchsorted(cdf, uniform * cdf[-1], side="right")
    drawn: IntArray = np.minimum(picks, cdf.size - 1).astype(np.int64)
    return drawn

"""Experiments: which variant each user sees, and the settings each variant's lists use.

A user's variant follows from a hash of their id and ``TAILOR_VARIANT_SALT`` alone, so it
is the same in every worker, after every restart and in ``tailor evaluate --variants``,
without a table of assignments anywhere: a user sees one variant for as long as the
variants and the salt stay as they are. The published variants' shares are laid end to
end on [0, 1) in the order listed; a user whose hash falls past them sees
:data:`~worker.config.CONTROL_VARIANT` (the settings unchanged). A shadow is computed for
its own sample of users, drawn with its name in the hash, so a shadow's sample is
independent of the published split and of other shadows.

Only list assembly differs by variant: the models are shared and learn from every event
(see :meth:`worker.recommend.core.Recommender.process`).
"""

from __future__ import annotations

import hashlib

from worker.config import CONTROL_VARIANT, Settings, variant_overrides

__all__ = ["CONTROL_VARIANT", "Variants", "unit_hash"]

_SCALE = float(2**64)


def unit_hash(user_id: str, salt: str, scope: str = "") -> float:
    """A number in [0, 1) that depends only on the user id, the salt and the scope.

    BLAKE2b (not Python's ``hash``, which is salted per process) over the three, with a
    separator no id can forge into another split of the same text.
    """
    text = f"{salt}\x1f{scope}\x1f{user_id}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / _SCALE


class Variants:
    """The experiment as configured: who sees which variant, and with what settings.

    Each variant's :class:`Settings` is built once, here (``model_copy`` of the worker's
    settings with the variant's validated overrides), and reused for every batch.
    """

    def __init__(self, settings: Settings) -> None:
        self.salt = settings.variant_salt
        self.enabled = bool(settings.variants)
        self.settings: dict[str, Settings] = {CONTROL_VARIANT: settings}
        self._bounds: list[tuple[float, str]] = []
        self.shadows: dict[str, float] = {}
        upper = 0.0
        for name, variant in settings.variants.items():
            overrides = variant_overrides(variant)
            self.settings[name] = settings.model_copy(update=overrides)
            if variant.shadow:
                self.shadows[name] = variant.share
            else:
                upper += variant.share
                self._bounds.append((upper, name))

    @property
    def published(self) -> list[str]:
        """The names a published list can carry: the published variants, then control."""
        return [name for _, name in self._bounds] + [CONTROL_VARIANT]

    def assign(self, user_id: str) -> str:
        """The variant whose list ``user_id`` is published."""
        if not self._bounds:
            return CONTROL_VARIANT
        where = unit_hash(user_id, self.salt)
        for upper, name in self._bounds:
            if where < upper:
                return name
        return CONTROL_VARIANT

    def shadows_of(self, user_id: str) -> list[str]:
        """The shadows computed for ``user_id`` (each samples its share of the users)."""
        return [
            name
            for name, share in self.shadows.items()
            if share >= 1.0 or unit_hash(user_id, self.salt, name) < share
        ]

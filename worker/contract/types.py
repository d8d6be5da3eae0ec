"""Bounded scalar types shared by every message.

Ids and free-text fields are bounded so that one hostile message cannot blow up memory,
Redis keys or Prometheus labels downstream; control characters are refused because they
break logs, key names and terminals.

``MAX_ID_LENGTH`` is the contract's ceiling (it is in the published JSON schema); a
deployment may lower it with ``TAILOR_MAX_ID_LENGTH``, which the decoder passes in the
validation context as ``max_id_length``. The same validator applies both, so there is one
way an id is judged.
"""

from typing import Annotated

from pydantic import AfterValidator, StringConstraints, ValidationInfo

__all__ = ["ID_LENGTH_CONTEXT", "MAX_ID_LENGTH", "Identifier", "ShortText"]

MAX_ID_LENGTH = 128
#: Validation-context key of a deployment's lower id limit.
ID_LENGTH_CONTEXT = "max_id_length"

# No control characters (C0, DEL, C1); at least one visible character.
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"


def _within_configured_length(value: str, info: ValidationInfo) -> str:
    """Apply the deployment's id limit, when it set one below the contract's ceiling."""
    limit = (info.context or {}).get(ID_LENGTH_CONTEXT, MAX_ID_LENGTH)
    if len(value) > limit:
        raise ValueError(f"id is {len(value)} characters, more than the limit of {limit}")
    return value


Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=_NO_CONTROL),
    AfterValidator(_within_configured_length),
]
ShortText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]

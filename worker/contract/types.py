"""Bounded scalar types shared by every message.

Ids and free-text fields are bounded so that one hostile message cannot blow up memory,
Redis keys or Prometheus labels downstream; control characters are refused because they
break logs, key names and terminals.
"""

from typing import Annotated

from pydantic import StringConstraints

__all__ = ["MAX_ID_LENGTH", "Identifier", "ShortText"]

MAX_ID_LENGTH = 128

# No control characters (C0, DEL, C1); at least one visible character.
_NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"

Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=_NO_CONTROL)
]
ShortText = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]

"""Passwords out of everything a person reads: log lines, errors, benchmark output.

Settings hold credentials in URLs (``redis://user:secret@host``) and in secret fields;
pydantic keeps the secret fields hidden, but a URL travels into messages whole (an error
naming where it could not connect, a library's own log line). One formatter masks any
``scheme://user:password@`` in every log line, and :func:`redacted_url` masks the one
URL a message is about.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["RedactingFormatter", "redact", "redacted_url"]

# scheme://[user]:password@ : the password runs to the last '@' before the host
_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^\s/]*@")


def redacted_url(url: str) -> str:
    """``url`` fit for a log line: a password in it is replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))


def redact(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password masked."""
    return _CREDENTIALS.sub(r"\g<head>***@", text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback) never shows a password."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

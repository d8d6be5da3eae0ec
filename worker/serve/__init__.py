"""``tailor serve``: a read path without Kafka, for frontends that pull.

The workers store each user's latest published list beside their state in Redis
(``TAILOR_STORE_LISTS``) and checkpoint the shared models there; this package answers
HTTP requests from both (:mod:`.app`), with the trending part of the newest checkpoint
kept in memory (:mod:`.trending`). :mod:`.command` is the ``tailor serve`` command; it
needs the ``serve`` extra (FastAPI, uvicorn).
"""

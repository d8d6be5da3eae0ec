"""Tailor: a streaming personalization worker.

Interactions arrive on Kafka, per-user state lives in Redis, online models learn in memory,
and every interaction yields that user's refreshed recommendations on an output topic.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

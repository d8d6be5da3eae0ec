"""The I/O-free recommender core shared by ``tailor run``, ``tailor demo`` and evaluation."""

from worker.recommend.core import BatchResult, Envelope, Published, Recommender

__all__ = ["BatchResult", "Envelope", "Published", "Recommender"]

"""Shared models across workers and restarts: deltas on a topic, checkpoints in Redis."""

"""Kafka in and out: the one client factory, delivery tracking and the dead-letter queue."""

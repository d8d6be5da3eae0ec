"""Per-user state: what it holds (:mod:`.user`) and the one place that talks to Redis."""

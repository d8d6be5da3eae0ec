"""Online models shared by every user: item index, catalog, trending, co-visitation, taste, ranker.

They live in the worker's memory as numpy arrays (one vectorised call per micro-batch), are
bounded by ``max_items`` and ``covis_neighbours``, and learn from every event.
"""

"""Prequential evaluation: replay a log through the worker's own core and the baselines."""

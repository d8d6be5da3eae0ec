"""Live quality and bias: what the published lists are worth, measured as they are used.

``live`` scores each fresh event against the list last published for its user (the
prequential definition of ``tailor evaluate``), ``exposure`` measures, per window, how the
published slots spread over the catalog, ``sources`` names where each listed item came
from. Pure logic: the core fills the counts, the loop exports them.
"""

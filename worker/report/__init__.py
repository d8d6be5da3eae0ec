"""``tailor report``: live quality, experiment, bias and trending, summarised for people."""

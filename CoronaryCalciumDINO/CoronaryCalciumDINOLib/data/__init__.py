"""Training and evaluation data: the per-study format, COCA reader, slice datasets, splits."""

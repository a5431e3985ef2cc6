"""Looking at a merge: quick probes and their scorers, side-by-side chat,
per-layer numbers about the weights, and the paper-style table."""

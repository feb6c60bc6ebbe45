"""Active learning: the stage loop (``loop``), the per-stage records of a run folder (``records``),
reading run folders into learning curves (``runs``), comparing runs with intervals and penalty
matrices (``compare``), and grids of runs on Ray (``sweep``)."""

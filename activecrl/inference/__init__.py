"""Model outputs over a pool: one forward pass (``predict`` -> ``PoolOutputs``: logits and
penultimate features, ``outputs``) and MC-dropout sampling (``mc_dropout``), shared by the
strategies, the methods and the loop."""

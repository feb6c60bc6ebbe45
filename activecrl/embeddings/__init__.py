"""Embeddings for strategies that work in a feature space: label-free ones learnt from the pool
(``pretrain``: k-means patch features or SimCLR; ``patches``: the patch-feature steps) and
reading any saved embedding for ``run --embeddings`` (``load``)."""

"""Labeling a folder of unlabeled images: which to label first, Label Studio round trips, and
auto-labels with a guaranteed error rate.

``db`` (the SQLite schema), ``images`` (finding and hashing the pool), ``batches`` (rounds, audit
samples, index sets), ``formats`` (plain CSV) and ``labelstudio`` (tasks, config, exports),
``importing`` (all-or-nothing imports), ``status``, ``autolabel`` (export with SGR), and
``project.Project``, the API the ``activecrl label`` commands call.
"""

from activecrl.label.project import ImageCheck, Project

__all__ = ["Project", "ImageCheck"]

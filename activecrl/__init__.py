"""activecrl: deep active learning with confidence-aware training.

Import what you need from the subpackages (``activecrl.data``, ``activecrl.models``,
``activecrl.training``, ``activecrl.strategies``, ``activecrl.al``, ``activecrl.evaluation``;
ARCHITECTURE.md is the map); importing the package itself does nothing beyond defining the
version, a null logging handler and the finder of the old top-level names (``_old_names``).
"""

import logging

from activecrl import _old_names

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
_old_names.install()

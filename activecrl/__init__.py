"""activecrl: deep active learning with confidence-aware training.

Import what you need from the submodules (``activecrl.data``, ``activecrl.models``,
``activecrl.trainers``, ``activecrl.metrics``, ``activecrl.loop``); importing the package itself
does nothing beyond defining the version and a null logging handler.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

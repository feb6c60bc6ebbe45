"""User-facing errors.

Everything a user can get wrong (a name, a path, a shape, a config value) raises a subclass of
``ActiveCRLError`` with a message that says what was expected, what arrived, and how to fix it.
The CLI catches this base class and prints the message without a traceback.
"""


class ActiveCRLError(Exception):
    """Base class for errors caused by bad input rather than by a bug."""


class ConfigError(ActiveCRLError, ValueError):
    """A parameter or config value is out of range or of the wrong kind."""


class RegistryError(ActiveCRLError, KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(ActiveCRLError):
    """A dataset is missing, corrupt, or not of the expected layout."""


class TrainingDiverged(ActiveCRLError, FloatingPointError):
    """The training loss became NaN or infinite."""

"""The ``activecrl`` command (``app``) and the flags it derives from the config dataclasses
(``options``). Nothing is imported here, so importing the library never imports typer."""

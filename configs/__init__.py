"""activecrl's presets: ``configs/*.toml``, read with importlib.resources (``activecrl run --config NAME``).

A package only so that the TOML files install with activecrl; it holds no code.
"""

"""The small core every other part builds on: config dataclasses and TOML (``config``), registries
(``registry``), user-facing errors (``errors``), argument checks (``validate``), atomic files
(``io``), and the device, seed and thread rules (``runtime``). Nothing here imports torch models,
strategies or the loop."""

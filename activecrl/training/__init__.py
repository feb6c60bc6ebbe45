"""Training: the ``Trainer`` loop and its registry (``trainers``), the losses it can add (``crl``:
the Correctness Ranking Loss), and the ingredients ``TrainConfig`` switches on: learning-rate
schedules (``schedules``), SAM (``sam``), SWA/EMA weight averaging (``weight_averaging``) and
RegMixup (``regmixup``)."""

"""Evaluation: the confidence metrics (``metrics``: accuracy, AURC, E-AURC, AUGRC, AUPR-Error,
FPR95, ECE, NLL, Brier, OOD metrics), their bootstrap intervals (``bootstrap``) and the paper-style
tables of saved runs (``report``)."""

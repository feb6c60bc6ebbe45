"""Which differences in the CIFAR-10 train tables are significant (writes significance.md here).

1. CRL vs baseline over seeds 0-2: paired t-test (seed s of both trainers shares the initial weights
   and batch order), per metric, alpha 0.05, no correction for the nine metrics.
2. Every seed-0 run vs the seed-0 baseline: paired bootstrap over the test set (1,000 resamples,
   seed 0): significant when the 95 % interval of the difference excludes 0. Test-set noise only.

Needs each run's predictions.npz. Run from the repository root:
    python results/cifar10_train/significance.py
"""

import json
from pathlib import Path

from activecrl.evaluation.bootstrap import paired_difference
from activecrl.al.compare import paired_t_test
from activecrl.evaluation.metrics import METRIC_NAMES, PAPER_SCALE
from activecrl.evaluation.report import TRAIN_HEADERS

HERE = Path(__file__).resolve().parent


def metrics(run):
    return json.loads((HERE / run / "metrics.json").read_text())["metrics"]


def main():
    lines = ["# Significance of the CIFAR-10 train differences", "",
             "Made by `python results/cifar10_train/significance.py` (see its docstring). Scaled like the "
             "tables (AURC, E-AURC, AUGRC ×10³, NLL ×10, others in %); n.s. = not significant at α = 0.05.", "",
             "## CRL − Baseline over seeds 0, 1, 2 (paired t-test)", "",
             "| metric | mean difference | p | |", "|---|---:|---:|---|"]
    for m in METRIC_NAMES:
        crl = [metrics(r)[m] for r in ("crl", "crl-s1", "crl-s2")]
        base = [metrics(r)[m] for r in ("baseline", "baseline-s1", "baseline-s2")]
        diff, p = paired_t_test(crl, base)
        lines.append(f"| {TRAIN_HEADERS[m]} | {diff * PAPER_SCALE[m]:+.2f} | {p:.3f} | "
                     f"{'significant' if p < 0.05 else 'n.s.'} |")
    lines += ["", "## Seed-0 runs − seed-0 Baseline (paired bootstrap over the test set)", "",
              "difference [95 % interval]; **bold** = significant (interval excludes 0)", "",
              "| run | " + " | ".join(TRAIN_HEADERS[m] for m in METRIC_NAMES) + " |",
              "|---|" + "---:|" * len(METRIC_NAMES)]
    for run in ("crl", "aes6", "mc_dropout", "aleatoric", "ensemble3-crl05"):
        d = paired_difference(HERE / run, HERE / "baseline", n_resamples=1000, seed=0)
        cells = []
        for m in METRIC_NAMES:
            k = PAPER_SCALE[m]
            text = f"{d[m]['diff'] * k:+.2f} [{d[m]['ci95'][0] * k:+.2f}, {d[m]['ci95'][1] * k:+.2f}]"
            cells.append(f"**{text}**" if d[m]["significant"] else text)
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    (HERE / "significance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

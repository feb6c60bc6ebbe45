"""`activecrl compare` on hand-made run folders whose AUBC and penalty matrix are known."""

import itertools
import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from activecrl.cli.app import app
from activecrl.al.compare import compare_runs, paired_t_test, trial_interval, write_compare
from activecrl.al.runs import normalised_area
from activecrl.core.errors import ConfigError

runner = CliRunner()
LABELS = [10, 20, 40, 60]  # n_labeled at stages 0..3


def make_run(path, accuracy, *, strategy="random", trainer="baseline", dataset="cifar10", seed=0, initial=10,
             labels=LABELS, planned_trials=None, extra=None):
    """A run folder; ``accuracy[trial][stage]`` (shorter lists = unfinished trials)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({
        "dataset": dataset, "strategy": strategy, "trainer": trainer, "seed": seed, "initial": initial,
        "trials": planned_trials or len(accuracy), "stages": len(labels)}))
    lines = []
    for t, row in enumerate(accuracy):
        for s, acc in enumerate(row):
            record = {"trial": t, "seed": seed + t, "stage": s, "n_labeled": labels[s] + initial - 10,
                      "accuracy": acc, "aurc": 1 - acc, "queried": [], **(extra or {})}
            lines.append(json.dumps(record))
    (path / "results.jsonl").write_text("\n".join(lines) + "\n")
    return path


# A beats B by 0.05, 0.06, 0.04 over the three trials at stages 1-3 (t = 8.66, p = 0.013);
# C = B + (0.01, -0.01, 0) there (mean difference 0: never significant); A - C = (0.04, 0.07, 0.04)
# (t = 5, p = 0.038). Stage 0 is identical for all (the shared seed set): never significant.
# So with L = 4 tested stages: P[A][B] = P[A][C] = 3/4, everything else 0.
B = [[0.20, 0.30, 0.40, 0.50], [0.21, 0.31, 0.41, 0.51], [0.22, 0.32, 0.42, 0.52]]
A = [[b[0]] + [x + d for x in b[1:]] for b, d in zip(B, (0.05, 0.06, 0.04))]
C = [[b[0]] + [x + d for x in b[1:]] for b, d in zip(B, (0.01, -0.01, 0.0))]


def test_statistics_by_hand():
    # trapezoids: 10 * (0.2 + 0.4) / 2 + 20 * (0.4 + 0.5) / 2 = 3 + 9 = 12 over the range 30
    assert normalised_area([10, 20, 40], [0.2, 0.4, 0.5]) == pytest.approx(0.4)
    assert normalised_area([10], [0.3]) == 0.3
    assert trial_interval([0.3]) == (0.3, None)


def _exact_bootstrap_percentiles(values):
    """The 2.5th and 97.5th percentiles of the mean over all k^k equally likely resamples (small k)."""
    k = len(values)
    means = np.sort([np.mean([values[i] for i in picks]) for picks in itertools.product(range(k), repeat=k)])
    return np.percentile(means, [2.5, 97.5])


def test_trial_interval_is_the_percentile_bootstrap_of_the_mean():
    values = [0.4, 0.5, 0.6, 0.9]
    mean, ci = trial_interval(values)
    assert mean == pytest.approx(0.6)
    np.testing.assert_allclose(ci, _exact_bootstrap_percentiles(values), atol=0.01)
    assert trial_interval(values) == (mean, ci)  # a fixed seed: the same interval every time
    # near the top of the range a t-interval goes above 1 (0.94 + 4.30 · 0.095 / √3 = 1.18)
    near_one = [0.99, 1.0, 0.83]
    assert trial_interval(near_one)[1][1] <= 1.0 < 0.94 + stats.t.ppf(0.975, 2) * np.std(near_one, ddof=1) / 3 ** 0.5
    low, high = trial_interval([0.0, 0.02, 0.3])[1]
    assert 0.0 <= low < high <= 0.3
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random(4), rng.random(4)
        diff, p = paired_t_test(a, b)
        assert diff == pytest.approx(np.mean(a - b)) and p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert paired_t_test([0.3, 0.4], [0.3, 0.4]) == (0.0, 1.0)  # identical: no evidence
    assert paired_t_test([0.4, 0.5], [0.3, 0.4])[1] == 0.0  # every trial agrees exactly


def test_penalty_matrix_known_answer(tmp_path):
    runs = [make_run(tmp_path / "a", A, strategy="entropy"), make_run(tmp_path / "b", B),
            make_run(tmp_path / "c", C, strategy="coreset")]
    for stage in (1, 2, 3):  # the premise, checked with scipy
        assert stats.ttest_rel([r[stage] for r in A], [r[stage] for r in B]).pvalue < 0.05
        assert stats.ttest_rel([r[stage] for r in A], [r[stage] for r in C]).pvalue < 0.05
    result = compare_runs(runs)
    assert result.labels == ["entropy (baseline)", "random (baseline)", "coreset (baseline)"]
    np.testing.assert_allclose(result.penalty, [[0, 0.75, 0.75], [0, 0, 0], [0, 0, 0]])
    assert (result.tested_stages[~np.eye(3, dtype=bool)] == 4).all()
    assert result.column_means == pytest.approx([0.0, 0.375, 0.375])
    # rows follow the order given
    flipped = compare_runs(runs[::-1])
    np.testing.assert_allclose(flipped.penalty, [[0, 0, 0], [0, 0, 0], [0.75, 0.75, 0]])
    # AUBC of trial 0 of B: (10 * 0.25 + 20 * 0.35 + 20 * 0.45) / 50 = 0.37
    assert result.aubc["random (baseline)"].per_trial[0] == pytest.approx(0.37)
    assert result.aubc["random (baseline)"].mean == pytest.approx(0.38)
    assert result.aubc_aurc["random (baseline)"].mean == pytest.approx(0.62)
    assert result.notes == []


def test_write_compare_schema_and_figures(tmp_path):
    runs = [make_run(tmp_path / "a", A, strategy="entropy"), make_run(tmp_path / "b", B)]
    out = tmp_path / "out"
    write_compare(compare_runs(runs), out)
    blob = json.loads((out / "compare.json").read_text())
    assert blob["labels"] == ["entropy (baseline)", "random (baseline)"]
    assert set(blob["aubc"]["random (baseline)"]) >= {"mean", "ci95", "per_trial"}
    assert len(blob["aubc"]["random (baseline)"]["per_trial"]) == 3
    assert blob["penalty"]["labels"] == blob["labels"]
    np.testing.assert_allclose(blob["penalty"]["matrix"], [[0, 0.75], [0, 0]])
    for name in ("penalty.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_datasets_sum_blockwise(tmp_path):
    runs = [make_run(tmp_path / "c10-a", A, strategy="entropy"), make_run(tmp_path / "c10-b", B),
            make_run(tmp_path / "svhn-a", A, strategy="entropy", dataset="svhn"),
            make_run(tmp_path / "svhn-b", B, dataset="svhn")]
    result = compare_runs(runs)
    # the same strategy on two datasets: distinct labels from the folder names, never compared across
    assert result.labels == ["entropy (baseline) · c10-a", "random (baseline) · c10-b",
                             "entropy (baseline) · svhn-a", "random (baseline) · svhn-b"]
    assert result.penalty[0, 1] == pytest.approx(0.75) and result.penalty[2, 3] == pytest.approx(0.75)
    assert result.penalty[0, 3] == 0 and result.tested_stages[0, 3] == 0
    assert result.column_means == pytest.approx([0, 0.75, 0, 0.75])


def test_unfinished_run_compared_on_the_stages_it_has(tmp_path):
    partial = [B[0][:4], B[1][:2], B[2][:3]]  # trial 1 stopped after 2 stages, trial 2 after 3
    runs = [make_run(tmp_path / "a", A, strategy="entropy"),
            make_run(tmp_path / "b", partial, planned_trials=3)]
    result = compare_runs(runs)
    # stages 0-2 are tested (L = 3), stage 3 has only trial 0 (not tested). Stage 1: all three trials,
    # significant; stage 2: trials 0 and 2, differences (0.05, 0.04): t = 9 with 1 df, p = 0.07, not
    # significant. So P = 1/3.
    assert stats.ttest_rel([A[0][2], A[2][2]], [B[0][2], B[2][2]]).pvalue > 0.05
    assert result.tested_stages[0, 1] == 3
    assert result.penalty[0, 1] == pytest.approx(1 / 3)
    assert result.aubc["random (baseline)"].trials == [0]  # the only trial with every stage
    # notes count trials from 1, as the console does (records keep 0-based indices)
    assert any("unfinished" in n and "trial 2 has 2 of 4 stages" in n for n in result.notes)
    assert any("trial(s) [2, 3] stop before stage 4" in n and "left out of its AUBC" in n for n in result.notes)
    # a run that never got past stage 1: AUBC of every run over stages 1-2 only, and said so
    short = make_run(tmp_path / "s", [r[:2] for r in C], strategy="coreset", planned_trials=3)
    result = compare_runs(runs + [short])
    assert result.stages["cifar10"] == [0, 1]
    assert any("AUBC covers stages 1-2" in n for n in result.notes)


def test_bad_input(tmp_path):
    a = make_run(tmp_path / "a", A, strategy="entropy")
    with pytest.raises(ConfigError, match="does not exist"):
        compare_runs([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="given twice"):
        compare_runs([a, a])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        compare_runs([a, tmp_path / "empty"])
    bare = make_run(tmp_path / "bare", [], strategy="x")
    with pytest.raises(ConfigError, match="no completed stage"):
        compare_runs([a, bare])
    other_seed = make_run(tmp_path / "seed5", B, seed=5)
    with pytest.raises(ConfigError, match="share no trial: their base seeds differ"):
        compare_runs([a, other_seed])
    other_budget = make_run(tmp_path / "big", B, initial=500)
    with pytest.raises(ConfigError, match="share no stage with the same number of labels"):
        compare_runs([a, other_budget])
    # runs whose folder names collide too are told apart by their whole path, as in `activecrl plot`
    mixed = make_run(tmp_path / "svhn" / "a", A, strategy="entropy", dataset="svhn")
    assert compare_runs([a, mixed]).labels == [f"entropy (baseline) · {a}", f"entropy (baseline) · {mixed}"]


def test_cli_compare_and_nothing_half_written(tmp_path):
    a, b = make_run(tmp_path / "a", A, strategy="entropy"), make_run(tmp_path / "b", B)
    out = tmp_path / "out"
    result = runner.invoke(app, ["compare", str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "entropy" in result.output and "beaten" in result.output and (out / "compare.json").is_file()
    # bad input: a clear error and no output folder at all
    bad = make_run(tmp_path / "seed5", B, seed=5)
    result = runner.invoke(app, ["compare", str(a), str(bad), "-o", str(tmp_path / "out2")])
    assert result.exit_code != 0 and "base seeds differ" in str(result.exception)
    assert not (tmp_path / "out2").exists()
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="-o must be a folder"):
        write_compare(compare_runs([a, b]), target)
    assert target.read_text() == "x"


def test_summary_reads_old_runs_and_points_to_compare(tmp_path):
    # records written before AUGRC existed, with the other fields `activecrl run` writes
    extra = {"eaurc": 0.1, "aupr_err": 0.5, "fpr95": 0.9, "ece": 0.05, "nll": 1.0, "brier": 0.5,
             "train_seconds": 1.0, "query_seconds": 0.1}
    a = make_run(tmp_path / "a", A, strategy="entropy", extra=extra)
    b = make_run(tmp_path / "b", B, extra=extra)
    result = runner.invoke(app, ["summary", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "AUGRC" in result.output and "–" in result.output and "activecrl compare" in result.output

"""bench/autolabel_payoff.py: the audit draws, the pool helpers and (slow) a tiny end-to-end run."""

import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from activecrl.evaluation.selective import sgr

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "autolabel_payoff.py"
spec = importlib.util.spec_from_file_location("autolabel_payoff", SCRIPT)
payoff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(payoff)


def _pool(n=20_000, seed=0):
    """Confidences uniform in (0, 1) and errors with P(error | c) = 0.4 (1 - c)^2: the error rate of
    the images above a threshold t is 0.4 (1 - t)^2 / 3, so a risk of 5 % is met from t = 0.39 up
    (61 % of the pool)."""
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    return conf, rng.random(n) < 0.4 * (1 - conf) ** 2


def test_draws_count_the_rest_of_the_pool_like_a_direct_count():
    conf, err = _pool(3_000)
    draws = payoff.audit_draws(conf, err, m=500, risk=0.10, delta=0.1, draws=5, seed=3)
    rng = np.random.default_rng(3)
    for d in range(5):
        sample = rng.choice(len(conf), size=500, replace=False)
        result = sgr(conf[sample], err[sample], 0.10, 0.1)
        rest = np.setdiff1d(np.arange(len(conf)), sample)
        auto = rest[conf[rest] >= result.threshold]
        assert draws.certified[d] == result.certified
        assert draws.coverage[d] == pytest.approx(len(auto) / len(rest))
        assert draws.realized[d] == pytest.approx(err[auto].mean() if len(auto) else 0.0)


def test_draws_keep_the_risk_in_all_but_a_delta_fraction():
    conf, err = _pool()
    draws = payoff.audit_draws(conf, err, m=1000, risk=0.05, delta=0.1, draws=200, seed=0)
    summary = draws.summary(0.05, 0.1)
    assert summary["certified"] > 0.9
    # the certified threshold lies above 0.39, with a margin for the bound
    assert 0.2 < summary["mean_coverage"] < 0.61
    assert summary["mean_realized_error"] < 0.05
    assert summary["violation_fraction"] <= 0.1
    lo, hi = summary["violation_ci95"]
    assert lo <= summary["violation_fraction"] <= hi


def test_a_model_that_never_errs_covers_everything_and_one_that_always_errs_nothing():
    conf = np.linspace(0.1, 1.0, 5_000)
    perfect = payoff.audit_draws(conf, np.zeros(5_000, bool), m=1000, risk=0.05, delta=0.1, draws=10, seed=0)
    # full coverage of the sample: the rest of the pool is covered down to the sample's least confident image
    assert perfect.certified.all() and (perfect.coverage > 0.99).all() and not perfect.realized.any()
    wrong = payoff.audit_draws(conf, np.ones(5_000, bool), m=1000, risk=0.05, delta=0.1, draws=10, seed=0)
    summary = wrong.summary(0.05, 0.1)
    assert not wrong.certified.any() and summary["mean_coverage"] == 0 and summary["violations"] == 0
    assert summary["mean_realized_error"] is None


def test_violations_count_certified_draws_above_the_risk():
    draws = payoff.Draws(np.array([True, True, False, True]), np.array([0.5, 0.4, 0.0, 0.3]),
                         np.array([0.12, 0.08, 0.0, 0.10]))
    summary = draws.summary(0.10, 0.1)
    assert summary["violations"] == 1 and summary["violation_fraction"] == 0.25
    assert summary["mean_realized_error"] == pytest.approx(0.10)


def test_audit_larger_than_the_pool_is_refused():
    with pytest.raises(payoff.ConfigError, match="audit size must be below"):
        payoff.audit_draws(np.ones(10), np.zeros(10, bool), m=10, risk=0.1, delta=0.1, draws=1, seed=0)


def _archive(path: Path, per_class: int, classes=("cat", "dog", "frog")) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for k, c in enumerate(classes):
            for i in range(per_class):
                pixels = rng.integers(0, 60, (32, 32, 3)) + 80 * k  # classes differ in brightness
                buf = io.BytesIO()
                Image.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG")
                for split in ("train", "test"):
                    info = tarfile.TarInfo(f"cifar10/{split}/{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


def test_extract_pool_and_oracle(tmp_path):
    archive = _archive(tmp_path / "data.tar.gz", per_class=10)
    train = payoff.extract_train(archive, tmp_path / "work")
    assert sorted(d.name for d in train.iterdir()) == ["cat", "dog", "frog"]
    assert not (tmp_path / "work" / "cifar10" / "test").exists()
    pool = payoff.stratified_pool(train, tmp_path / "work", 15, seed=0)
    assert [len(list((pool / c).iterdir())) for c in ("cat", "dog", "frog")] == [5, 5, 5]
    truth = payoff.write_oracle(pool, tmp_path / "oracle.csv")
    assert len(truth) == 15 and truth[next(iter(truth))] == "cat"
    assert (tmp_path / "oracle.csv").read_text().splitlines()[0] == "image,label"


@pytest.mark.slow
def test_two_rounds_end_to_end_and_resume(tmp_path):
    archive = _archive(tmp_path / "data.tar.gz", per_class=60)
    out = tmp_path / "out"
    args = ["--archive", str(archive), "--work", str(tmp_path / "work"), "--out", str(out), "--budget", "20",
            "--audit", "40", "--draws", "20", "--arms", "features-baseline"]
    payoff.main(args + ["--rounds", "1"])
    payoff.main(args + ["--rounds", "2"])  # resumes the arm's project from its first round
    rows = [json.loads(p.read_text()) for p in sorted((out / "features-baseline").glob("round-*.json"))]
    assert [r["train_labels"] for r in rows] == [20, 40]
    assert rows[1]["unlabeled"] == 180 - 40 - 60
    assert rows[1]["draws_R10"]["draws"] == 20
    assert (out / "table.md").read_text().count("features-baseline") == 2 and (out / "coverage.png").exists()

"""What a new user meets: the installed `activecrl` command, run from a folder of their own."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_compare import make_run

ACTIVECRL = Path(sys.executable).parent / "activecrl"  # the console script installed next to this Python
QUICK = ["--initial", "10", "--budget", "10", "--stages", "2", "--epochs", "1", "--trials", "1", "--device", "cpu"]


def activecrl(*args, cwd: Path, columns: int = 200) -> subprocess.CompletedProcess:
    """The installed command in ``cwd`` (the tests' private data folder comes with the environment)."""
    return subprocess.run([str(ACTIVECRL), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": str(columns)})


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def image_folder(root: Path, n_train: int = 12, n_test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def keep_first_stage(out: Path) -> None:
    """The run folder as a Ctrl-C after the first stage leaves it."""
    for path in (out / "results.jsonl", *sorted((out / "trials").glob("*.jsonl"))):
        path.write_text(path.read_text().splitlines()[0] + "\n")


@pytest.fixture
def work(tmp_path):
    folder = tmp_path / "work"
    image_folder(folder / "mycifar")
    return folder


def test_the_printed_resume_command_works_from_another_folder(work, tmp_path):
    text = ok(activecrl("run", "--dataset", "mycifar", *QUICK, "--out", "r", cwd=work))
    # what a person reads: trials and stages from 1, accuracy in %, AURC x10^3
    assert re.search(r"trial 1 stage 1: 10 labels → accuracy \d+\.\d\d%, AURC \d+\.\d\d ×10³", text)
    assert "stage 0" not in text and "trial 0" not in text
    out = work / "r"
    saved = json.loads((out / "config.json").read_text())
    assert saved["dataset"] == str((work / "mycifar").resolve())  # recorded resolved
    assert [json.loads(line)["stage"] for line in (out / "results.jsonl").read_text().splitlines()] == [0, 1]

    keep_first_stage(out)
    ok(activecrl("run", "--resume", "--out", out, cwd=tmp_path))  # elsewhere, as printed
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    # either spelling of the dataset is the saved option, not a change
    ok(activecrl("run", "--resume", "--out", out, "--dataset", work / "mycifar", cwd=tmp_path))
    ok(activecrl("run", "--resume", "--out", "r", "--dataset", "mycifar", *QUICK, cwd=work))

    # one rule for what may change, the same in both refusals
    rule = ("only where the run executes or is tracked may change: --device, --data-dir, --track and --tracking-uri, "
            "and --threads on a GPU")
    changed = activecrl("run", "--resume", "--out", out, "--stages", "3", cwd=tmp_path)
    threads = activecrl("run", "--resume", "--out", out, "--threads", "2", "--device", "cpu", cwd=tmp_path)
    for refused in (changed, threads):
        assert refused.returncode == 2 and rule in refused.stdout.replace("\n", " "), refused.stdout
    assert "--stages 3 (saved: 2)" in changed.stdout and "--threads must be 1" in threads.stdout


def test_unknown_names_say_what_was_meant(work):
    done = activecrl("run", "--dataset", "mycifr", "--out", "x", cwd=work)
    assert done.returncode == 2 and f"did you mean the folder {'mycifar'!r}" in done.stdout
    done = activecrl("run", "--dataset", "cifar1O", "--out", "x", cwd=work)
    assert "did you mean 'cifar10'" in done.stdout
    done = activecrl("run", "--config", "cifar10_papr", cwd=work)
    assert done.returncode == 2 and "did you mean 'cifar10_paper'" in done.stdout
    done = activecrl("train", "--schedule", "cosin", "--out", "x", cwd=work)
    assert done.returncode == 2 and "did you mean 'cosine'" in done.stdout
    assert not (work / "x").exists()


def test_every_undecodable_image_is_named_and_can_be_skipped(work):
    from activecrl.data import load_dataset
    from activecrl.core.errors import DataError

    for i in range(12):
        (work / "mycifar" / "train" / "cat" / f"bad{i:02d}.png").write_bytes(b"not a png")
    (work / "mycifar" / "test" / "dog" / "zz.jpg").write_bytes(b"")
    refused = activecrl("run", "--dataset", "mycifar", *QUICK, "--out", "r", cwd=work)
    message = refused.stdout.replace("\n", "")
    assert refused.returncode == 2 and "cannot decode 13 image(s)" in message
    assert "test/dog/zz.jpg, train/cat/bad00.png" in message and "bad08.png and 3 more" in message
    assert "--skip-bad-images" in message and not (work / "r").exists()

    ok(activecrl("run", "--dataset", "mycifar", "--skip-bad-images", *QUICK, "--out", "r", cwd=work))
    saved = json.loads((work / "r" / "config.json").read_text())
    assert saved["skip_bad_images"] is True and saved["n_train"] == 24
    assert sorted(saved["skipped_images"]) == ["test/dog/zz.jpg"] + [f"train/cat/bad{i:02d}.png" for i in range(12)]
    # the cache keeps what was left out; a load without the option still refuses the folder
    dataset = load_dataset(work / "mycifar", skip_bad_images=True)
    assert len(dataset.skipped) == 13 and dataset.n_train == 24 and dataset.n_test == 8
    assert dataset.train_labels.tolist() == [0] * 12 + [1] * 12 and dataset.test_labels.tolist() == [0] * 4 + [1] * 4
    with pytest.raises(DataError, match="cannot decode 13"):
        load_dataset(work / "mycifar")


def test_an_interrupted_train_says_what_was_saved(tmp_path):
    (tmp_path / "interrupting.py").write_text(
        "from activecrl.training.trainers import Trainer\n\n\n"
        "class Interrupted(Trainer):\n"
        "    def fit(self, model, data, indices=None, *, progress=None):\n"
        "        raise KeyboardInterrupt  # as Ctrl-C during training\n")
    done = activecrl("train", "--trainer", "interrupting:Interrupted", "--epochs", "1", "--device", "cpu",
                     "--out", "t", cwd=tmp_path)
    assert done.returncode == 130
    assert "interrupted: nothing was saved to t" in done.stdout and "rerun the same command" in done.stdout
    assert not (tmp_path / "t").exists()


def test_compare_intervals_stay_inside_the_metric_range(tmp_path):
    # accuracy near 1 (AURC = 1 - accuracy near 0): a t-interval over 3 trials leaves [0, 1] here
    high = [[0.90, 0.97, 1.00, 1.00], [0.91, 0.99, 1.00, 1.00], [0.80, 0.85, 0.90, 0.95]]
    make_run(tmp_path / "a", high, strategy="entropy")
    make_run(tmp_path / "b", [[x - 0.01 for x in row] for row in high])
    text = ok(activecrl("compare", "a", "b", "-o", "cmp", cwd=tmp_path))
    assert "bootstrap interval" in text
    rows = [line for line in text.splitlines() if "cifar10" in line]
    intervals = [[float(v) for v in pair] for row in rows for pair in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", row)]
    assert len(intervals) == 4  # accuracy and AURC of two runs
    for acc, aurc in (intervals[0:2], intervals[2:4]):
        assert 0 <= acc[0] <= acc[1] <= 100 and 0 <= aurc[0] <= aurc[1] <= 1000
    blob = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for area in (*blob["aubc"].values(), *blob["aubc_aurc"].values()):
        assert min(area["per_trial"]) <= area["ci95"][0] <= area["mean"] <= area["ci95"][1] <= max(area["per_trial"])


def test_help_reads_at_80_columns(tmp_path):
    for command in ([], ["run"], ["train"], ["compare"]):
        text = ok(activecrl(*command, "--help", cwd=tmp_path, columns=80))
        assert max(map(len, text.splitlines())) <= 80, text
        cut = [line for line in text.splitlines()[1:] if line.endswith("...")]  # click's "too long" mark
        assert "…" not in text and not cut and "\\[" not in text, text
    app_help = " ".join(ok(activecrl("--help", cwd=tmp_path, columns=80)).split())
    assert "bootstrap intervals to its metrics.json." in app_help  # every summary whole
    run_help = " ".join(ok(activecrl("run", "--help", cwd=tmp_path, columns=80)).split())
    assert "--skip-bad-images" in run_help
    # the panels of the wide help, as sections: the training flags under their own heading
    panel = run_help.index("Training options (the [train] table of --config):")
    assert run_help.index("--skip-bad-images") < panel < run_help.index("--epochs")
    wide = ok(activecrl("run", "--help", cwd=tmp_path, columns=200))
    assert "╭" in wide and "…" not in wide  # rich panels where they fit


def test_plots_say_their_units(tmp_path, monkeypatch):
    from activecrl.al import runs
    from tests.test_cli_output import _summary

    drawn = {}
    real = runs.draw_curves
    monkeypatch.setattr(runs, "draw_curves", lambda curves, ylabels, title: drawn.update(
        curves=curves, ylabels=ylabels) or real(curves, ylabels, title))
    runs.plot_curves([_summary(tmp_path / "a", "entropy (crl)", 1, [0.5, 0.75])], tmp_path / "c.png")
    assert drawn["ylabels"]["accuracy"].startswith("test accuracy %")
    assert drawn["ylabels"]["aurc"].startswith("test AURC ×10³")
    assert drawn["curves"][0].mean["accuracy"].tolist() == [50.0, 75.0]
    assert drawn["curves"][0].mean["aurc"].tolist() == [500.0, 750.0]

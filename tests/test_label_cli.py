"""`activecrl label`: the whole loop through the installed console script, run from another folder;
the round engine against `activecrl run` on digits; bad input in CLI words."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ACTIVECRL = Path(sys.executable).with_name("activecrl")
CLASSES = ("red", "blue")


def cli(*args, cwd, ok=True):
    done = subprocess.run([str(ACTIVECRL), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def make_images(folder: Path, n: int = 40, size: int = 12) -> dict[str, str]:
    """``n`` flat images, reddish or bluish with noise; returns each file's true class."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    truth = {}
    for i in range(n):
        k = i % 2
        pixels = rng.integers(0, 90, (size, size, 3))
        pixels[:, :, 0 if k == 0 else 2] += 150
        name = f"img{i:03d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
        truth[name] = CLASSES[k]
    return truth


def write_labels(path: Path, truth: dict[str, str], images) -> Path:
    path.write_text("image,label\n" + "".join(f"{i},{truth[i]}\n" for i in images))
    return path


def read_batch(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_console_script_is_the_installed_one():
    assert ACTIVECRL.is_file(), f"no activecrl console script next to {sys.executable}"


def test_label_help_loads_no_torch():
    code = ("import sys; from activecrl.cli.app import app; import activecrl.cli.label; "
            "assert 'torch' not in sys.modules and 'sqlite3' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_labeling_loop(tmp_path):
    truth = make_images(tmp_path / "photos")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proj = tmp_path / "proj"
    cli("label", "init", proj, "--images", tmp_path / "photos", "--classes", ",".join(CLASSES), cwd=work)

    # cold start: no labels, TypiClust on the patch features; the batch file has the documented columns
    cli("label", "next", proj, "--budget", "6", cwd=work)
    batch = proj / "batches" / "round-1.csv"
    rows = read_batch(batch)
    assert list(rows[0]) == ["image", "suggested_label", "confidence", "audit"] and len(rows) == 6
    assert (proj / "cache").is_dir() and list((proj / "cache").glob("embeddings-*.npy"))
    # not imported yet: the same batch again, not a second one
    again = cli("label", "next", proj, "--budget", "6", cwd=work).stdout
    assert "re-issued" in again and read_batch(batch) == rows
    cli("label", "import", proj, write_labels(tmp_path / "r1.csv", truth, [r["image"] for r in rows]), cwd=work)

    # a model round with an audit sample: suggestions from the trained head, audit rows without them
    cli("label", "next", proj, "--budget", "4", "--audit", "3", cwd=work)
    rows2 = read_batch(proj / "batches" / "round-2.csv")
    audit = [r for r in rows2 if r["audit"] == "1"]
    assert len(rows2) == 7 and len(audit) == 3 and all(r["suggested_label"] == "" for r in audit)
    picked = [r for r in rows2 if r["audit"] == "0"]
    assert all(r["suggested_label"] in CLASSES and 0 < float(r["confidence"]) <= 1 for r in picked)
    assert not {r["image"] for r in rows2} & {r["image"] for r in rows}
    # --new discards the open batch; then label it
    cli("label", "next", proj, "--budget", "4", "--audit", "3", "--new", cwd=work)
    rows3 = read_batch(proj / "batches" / "round-2.csv")
    cli("label", "import", proj, write_labels(tmp_path / "r2.csv", truth, [r["image"] for r in rows3]), cwd=work)

    status = json.loads(cli("label", "status", proj, "--json", cwd=work).stdout)
    assert status["n_labeled"] == 13 and status["n_audit_labels"] == 3 and status["rounds"] == 2
    assert sum(status["labels_per_class"].values()) == 13
    shown = cli("label", "status", proj, cwd=work).stdout
    assert "labels per class" in shown and "needs 39 audit labels, has 3" in shown  # the auto-label preview
    assert [a["n_audit"] for a in status["auto_label"]] == [3, 3]

    # Label Studio tasks, config and the printed setup steps
    shown = cli("label", "next", proj, "--budget", "3", "--format", "labelstudio", "-o", tmp_path / "tasks.json",
                cwd=work).stdout
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert len(tasks) == 3 and (tmp_path / "labeling-config.xml").is_file() and "Local files" in shown

    out = cli("label", "export", proj, "-o", tmp_path / "labels.csv", cwd=work).stdout
    exported = read_batch(tmp_path / "labels.csv")
    assert "13 human labels" in out and len(exported) == 13
    assert all(truth[r["image"]] == r["label"] for r in exported)

    make_images(tmp_path / "photos" / "more", n=2)
    assert "added 2 images" in cli("label", "add", proj, tmp_path / "photos" / "more", cwd=work).stdout
    elsewhere = cli("label", "add", proj, tmp_path, cwd=work, ok=False)  # a folder outside the project's images
    assert elsewhere.returncode == 2 and "DIR must be the project's images folder" in elsewhere.stdout


@pytest.mark.slow
def test_simulated_rounds_with_an_image_model(tmp_path):
    truth = make_images(tmp_path / "photos", n=30)
    oracle = write_labels(tmp_path / "oracle.csv", truth, sorted(truth))
    proj = tmp_path / "proj"
    cli("label", "init", proj, "--images", tmp_path / "photos", "--classes", ",".join(CLASSES), "--model",
        "small_cnn4", "--image-size", "12", "--strategy", "entropy", cwd=tmp_path)
    first = cli("label", "next", proj, "--budget", "6", "--strategy", "random", "--oracle", oracle, cwd=tmp_path)
    assert "cold start" in first.stdout and "oracle: 6 new labels" in first.stdout
    second = cli("label", "next", proj, "--budget", "5", "--oracle", oracle, cwd=tmp_path).stdout
    assert "picked by entropy" in second and "images 12x12" in second
    assert json.loads(cli("label", "status", proj, "--json", cwd=tmp_path).stdout)["n_labeled"] == 11


def _export_digits(folder: Path) -> Path:
    """sklearn digits' training split in load_dataset's order, as 8x8 gray PNGs whose sorted names are
    the training indices; returns the oracle CSV (every image's label)."""
    from activecrl.data import load_dataset

    dataset = load_dataset("digits")
    folder.mkdir()
    rows = []
    for i, (image, label) in enumerate(zip(dataset.train_images.numpy(), dataset.train_labels.numpy())):
        Image.fromarray(image[0], mode="L").save(folder / f"{i:04d}.png")
        rows.append(f"{i:04d}.png,{label}\n")
    oracle = folder.parent / "oracle.csv"
    oracle.write_text("image,label\n" + "".join(rows))
    return oracle


def test_simulated_project_picks_what_run_picks_on_digits(tmp_path):
    """One engine: label init + label next --oracle per round = activecrl run, stage by stage."""
    oracle = _export_digits(tmp_path / "digits")
    common = ["--strategy", "least_conf", "--trainer", "crl", "--seed", "3", "--device", "cpu"]
    cli("run", "--dataset", "digits", "--model", "small_cnn", "--initial", "20", "--budget", "10", "--stages", "3",
        "--trials", "1", "--out", tmp_path / "run", *common, cwd=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]

    proj = tmp_path / "proj"
    cli("label", "init", proj, "--images", tmp_path / "digits", "--classes", ",".join(map(str, range(10))),
        "--model", "small_cnn", "--image-size", "8", "--trainer", "crl", cwd=tmp_path)
    picks = []
    for budget, strategy in ((20, "random"), (10, "least_conf"), (10, "least_conf")):
        cli("label", "next", proj, "--budget", budget, "--strategy", strategy, "--seed", "3", "--device", "cpu",
            "--oracle", oracle, cwd=tmp_path)
        rows = read_batch(proj / "batches" / f"round-{len(picks) + 1}.csv")
        picks.append(sorted(int(r["image"][:4]) for r in rows))
    assert picks[0] == records[0]["initial"]
    assert picks[1] == records[0]["queried"]
    assert picks[2] == records[1]["queried"]


def test_run_on_an_image_folder_names_the_queried_files(tmp_path):
    from activecrl.al.config import ALConfig
    from activecrl.al.loop import run_active_learning

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for k, cls in enumerate(CLASSES):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / cls / f"{i:02d}.png")
    config = ALConfig(dataset=str(tmp_path / "data"), model="small_cnn", initial=4, budget=3, stages=2, trials=1,
                      device="cpu", data_dir=str(tmp_path / "cache"), train={"epochs": 1})
    records = run_active_learning(config, tmp_path / "run")
    files = records[0].extra["queried_files"]
    # training rows are blue/00..11 then red/00..11 (classes sorted): index i names that file
    expected = [f"train/{sorted(CLASSES)[i // 12]}/{i % 12:02d}.png" for i in records[0].queried]
    assert files == expected and len(files) == 3


def test_pretrain_accepts_a_flat_folder(tmp_path):
    make_images(tmp_path / "flat", n=20)
    done = cli("pretrain", "--dataset", tmp_path / "flat", "--out", tmp_path / "emb", "--centroids", "8",
               "--kmeans-patches", "500", "--patch-size", "3", "--data-dir", tmp_path / "cache", cwd=tmp_path)
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape[0] == 20, done.stdout


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """One folder of bad files beside a project with 10 unlabeled images."""
    root = tmp_path_factory.mktemp("bad")
    truth = make_images(root / "photos", n=10)
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "bad.png").write_bytes(b"not an image")
    (root / "dups.txt").write_text("a\nb\na\n")
    (root / "blank.txt").write_text("\n# nothing\n")
    (root / "nocolumns.csv").write_text("file,class\nimg000.png,red\n")
    (root / "other.json").write_text('{"not": "a list of tasks"}')
    write_labels(root / "partial.csv", truth, sorted(truth)[:1])
    cli("label", "init", "proj", "--images", "photos", "--classes", ",".join(CLASSES), cwd=root)
    return root


# the --oracle case comes last: it issues a batch before the oracle is found wanting
@pytest.mark.parametrize("args, message", [
    (["init", "P", "--images", "missing", "--classes", "a,b"], "--images must be a folder of images"),
    (["init", "P", "--images", "empty", "--classes", "a,b"], "which has none"),
    (["init", "P", "--images", "broken", "--classes", "a,b"], "bad.png"),
    (["init", "P", "--images", "photos", "--classes-file", "dups.txt"], "duplicates: a"),
    (["init", "P", "--images", "photos", "--classes-file", "blank.txt"], "--classes-file must name at least one"),
    (["init", "P", "--images", "photos", "--classes", "a,b", "--model", "nope"], "unknown model 'nope'"),
    (["status", "notaproject"], "PROJECT must be a labeling project folder"),
    (["import", "proj", "nocolumns.csv"], "columns image,label"),
    (["import", "proj", "other.json"], "must be a Label Studio export"),
    (["next", "proj", "--budget", "500"], "--budget must be at most the 10 unlabeled images"),
    (["next", "proj", "--budget", "2", "--oracle", "partial.csv"], "--oracle must give a label for every image"),
])
def test_bad_input_gets_a_message_in_cli_words(bad_inputs, args, message):
    done = cli("label", *args, cwd=bad_inputs, ok=False)
    assert done.returncode == 2 and message in " ".join(done.stdout.split()), done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr

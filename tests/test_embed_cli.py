"""`activecrl embed`: the command through the installed console script, its config, and `--ray` sharding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from activecrl.core.errors import ConfigError
from activecrl.embeddings.config import EmbedConfig

timm = pytest.importorskip("timm")

ARCH = "test_resnet"  # timm's tiny test network: fast on a CPU at a small input size
SCRIPT = Path(sys.executable).with_name("activecrl")


def _weights(folder: Path, in_chans: int = 1) -> Path:
    """Random weights of ARCH in a file: what --weights reads without any download."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    body = timm.create_model(ARCH, num_classes=0, in_chans=in_chans)
    path = folder / "w.safetensors"
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(path))
    return path


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})


def test_embed_then_run_a_linear_head_through_the_console_script(tmp_path):
    assert SCRIPT.is_file(), f"the console script is not installed next to {sys.executable}"
    weights = _weights(tmp_path)
    work = tmp_path / "elsewhere"  # not the repository: the installed command must work from anywhere
    work.mkdir()
    args = ("embed", "--dataset", "digits", "--model", f"timm:{ARCH}", "--weights", str(weights),
            "--input-size", "16", "--device", "cpu", "--threads", "1", "--out", "emb")
    done = _cli(work, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "preprocessing: images at 16x16 (bilinear), 1 channel(s), mean (0.500), std (0.500)" in done.stdout
    train, test = np.load(work / "emb" / "embeddings.npy"), np.load(work / "emb" / "test_embeddings.npy")
    assert train.dtype == np.float16 and train.shape[0] == 1347 and test.shape == (450, train.shape[1])
    np.testing.assert_allclose(np.linalg.norm(train.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert json.loads((work / "emb" / "config.json").read_text())["fingerprint"]["backbone"]["model"] == f"timm:{ARCH}"

    again = _cli(work, *args)
    assert again.returncode == 0 and "reused, nothing computed" in again.stdout

    run = _cli(work, "run", "--dataset", "digits", "--embeddings", "emb", "--model", "linear", "--device", "cpu",
               "--initial", "50", "--budget", "50", "--stages", "2", "--trials", "1", "--epochs", "5",
               "--out", "run")
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in (work / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [50, 100]


@pytest.mark.parametrize("args, message", [
    ((), "exactly one of --model timm:NAME and --encoder PRETRAIN_FOLDER, got neither"),
    (("--model", "resnet18"), "--model must be timm:NAME"),
    (("--model", "timm:resnet18", "--shards", "2"), "--shards: options of --ray only"),
    (("--model", "timm:resnet18", "--dtype", "int8"), "--dtype must be one of float16, float32"),
    (("--encoder", "p", "--pretrained"), "--pretrained: options of --model timm:NAME only"),
])
def test_bad_flags_are_one_line_in_flag_words(tmp_path, args, message):
    done = _cli(tmp_path, "embed", "--out", "emb", *args)
    assert done.returncode == 2 and message in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "emb").exists()


def test_config_checks_the_ray_options():
    with pytest.raises(ConfigError, match="--gpus-per-shard"):
        EmbedConfig(model="timm:resnet18", ray=True, device="cuda")
    with pytest.raises(ConfigError, match="--cpus-per-shard must be a non-negative number"):
        EmbedConfig(model="timm:resnet18", ray=True, cpus_per_shard=-1)
    assert EmbedConfig(encoder="folder").backbone == "folder"


def test_shard_bounds_cut_between_batches_and_cover_every_row():
    from activecrl.embeddings.distributed import shard_bounds

    assert shard_bounds(1000, 100, 3) == [(0, 400), (400, 700), (700, 1000)]
    assert shard_bounds(1050, 100, 2) == [(0, 600), (600, 1050)]  # 11 batches: 6 + 5, the last one short
    assert shard_bounds(50, 100, 4) == [(0, 50)]  # fewer batches than shards: no empty shard
    for n, b, k in ((1347, 64, 2), (450, 7, 5), (1, 1, 3)):
        bounds = shard_bounds(n, b, k)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
        assert all(start % b == 0 for start, _ in bounds)


@pytest.mark.slow  # starting a local Ray instance takes 10-60 s
def test_ray_shards_join_to_the_single_process_embeddings(tmp_path):
    pytest.importorskip("ray")
    from activecrl.embeddings.distributed import embed_on_ray
    from activecrl.embeddings.embed import embed_from_config

    weights = _weights(tmp_path)
    options = dict(dataset="digits", model=f"timm:{ARCH}", weights=str(weights), input_size=16, batch_size=64,
                   device="cpu", dtype="float32", threads=1)
    single = embed_from_config(EmbedConfig(**options), tmp_path / "single")
    seen = []
    sharded = embed_on_ray(EmbedConfig(**options, ray=True, shards=2), tmp_path / "ray", progress=seen.append)
    assert not sharded.reused and sharded.fingerprint == single.fingerprint
    for name in ("embeddings.npy", "test_embeddings.npy", "labels.npy", "test_labels.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "ray" / name), np.load(tmp_path / "single" / name))
    # two shards per split, each reported when it finishes, up to the whole split
    assert [(p.split, p.total) for p in seen] == [("test", 450)] * 2 + [("train", 1347)] * 2
    assert seen[1].done == 450 and seen[-1].done == 1347
    # an unchanged folder is reused without starting Ray
    assert embed_on_ray(EmbedConfig(**options, ray=True, shards=2), tmp_path / "ray").reused

"""`activecrl sweep`: grid checks, parallel record writing, and sweeps on one shared local Ray instance."""

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from activecrl.cli.app import app
from activecrl.core.errors import ActiveCRLError, ConfigError, RegistryError
from activecrl.al.records import RESULTS_FILE, StageRecord, append_trial_record, read_records
from activecrl.al.sweep import KILL_ONCE_ENV, expand_grid, load_sweep, run_sweep

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

# digits, 2 grid points x 2 trials of 2 stages, 2 epochs: a few seconds per trial on one thread
SWEEP_TOML = """
dataset = "digits"
model = "small_cnn"
trainer = "crl"
initial = 30
budget = 30
stages = 2
trials = 2
seed = 3
device = "cpu"

[train]
epochs = 2
batch_size = 32

[grid]
strategy = ["random", "least_conf"]
"""


def _strip(records):
    return [{k: v for k, v in r.to_json().items() if not k.endswith(("_seconds", "_mib"))} for r in records]


def _record(trial, stage, **extra):
    return StageRecord(trial=trial, seed=trial, stage=stage, n_labeled=10, metrics={"accuracy": 0.5},
                       queried=list(range(200)), extra=extra)


# ----------------------------------------------------------------------------------------------
# no Ray needed: the grid and its checks
# ----------------------------------------------------------------------------------------------
def test_grid_expands_every_combination(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SWEEP_TOML.replace('strategy = ["random", "least_conf"]',
                                       'strategy = ["random", "least_conf"]\ntrain.lr = [0.1, 0.05]\n'
                                       'trainer = ["baseline"]'))
    spec = load_sweep(path)
    assert [p.values for p in spec.points] == [
        {"strategy": s, "train.lr": lr, "trainer": "baseline"} for s in ("random", "least_conf") for lr in (0.1, 0.05)]
    assert spec.points[3].config.train.lr == 0.05 and spec.points[3].config.train.epochs == 2
    assert spec.points[3].config.strategy == "least_conf" and spec.points[3].config.trainer == "baseline"
    assert spec.points[0].name == "0-strategy=random-train.lr=0.1-trainer=baseline"
    assert len({p.name for p in spec.points}) == 4


@pytest.mark.parametrize("grid, message", [
    (None, "must have a \\[grid\\] table"),
    ({}, "must have a \\[grid\\] table"),
    ({"strategy": []}, "grid key 'strategy' has no values"),
    ({"stratgy": ["random"]}, "grid key 'stratgy' is not a run option"),
    ({"train": {"learning_rate": [0.1]}}, "grid key 'train.learning_rate' is not a run option"),
    ({"strategy": "random"}, "grid key 'strategy' must be a list"),
    ({"initial": [10, 0]}, "grid point 1 \\(initial=0\\).*initial must be an integer >= 2"),
])
def test_bad_grids_are_refused_naming_the_key(grid, message):
    with pytest.raises(ConfigError, match=message):
        expand_grid({"dataset": "digits"}, grid)


def test_points_are_checked_like_runs_before_anything_is_written(tmp_path):
    # a value a run refuses only once it sees the dataset (digits has 1,347 training images)
    spec = expand_grid({"dataset": "digits", "device": "cpu"}, {"initial": [10, 5000]})
    with pytest.raises(ConfigError, match="grid point 1 \\(initial=5000\\).*at most the training split size"):
        run_sweep(spec, tmp_path / "out")
    spec = expand_grid({"dataset": "digits", "device": "cpu"}, {"strategy": ["random", "nope"]})
    with pytest.raises(RegistryError, match="grid point 1 \\(strategy=nope\\).*unknown strategy"):
        run_sweep(spec, tmp_path / "out")
    spec = expand_grid({"dataset": "digits", "device": "cuda"}, {"strategy": ["random"]})
    with pytest.raises(ConfigError, match="device 'cuda', but --gpus-per-trial is 0"):
        run_sweep(spec, tmp_path / "out")
    with pytest.raises(ConfigError, match="--gpus-per-trial must be"):
        run_sweep(spec, tmp_path / "out", gpus_per_trial=1.5)
    assert not (tmp_path / "out").exists()


def test_point_config_is_written_as_a_run_writes_it(tmp_path):
    from activecrl.al import sweep
    from activecrl.embeddings.load import load_embeddings

    rows = np.random.default_rng(0).normal(size=(1347, 8)).astype(np.float32)  # one row per digits training image
    np.save(tmp_path / "emb.npy", rows)
    spec = expand_grid({"dataset": "digits", "device": "cpu", "embeddings": str(tmp_path / "emb.npy"),
                        "initial_strategy": "typiclust"}, {"strategy": ["random"]})
    sweep._write_folders(spec, tmp_path / "out", sweep._check_points(spec, task_cpus=1))
    config = json.loads((tmp_path / "out" / spec.points[0].name / "config.json").read_text())
    assert config["threads_used"] == 1 and config["dropout_used"] == 0.0 and config["n_train"] == 1347
    assert config["embeddings_fingerprint"] == json.loads(json.dumps(load_embeddings(tmp_path / "emb.npy", 1347)[1]))


def test_relative_paths_are_saved_absolute_and_an_old_relative_folder_still_matches(tmp_path, monkeypatch):
    from activecrl.al import sweep

    np.save(tmp_path / "emb.npy", np.zeros((1347, 4), dtype=np.float32))
    monkeypatch.chdir(tmp_path)
    spec = expand_grid({"dataset": "digits", "device": "cpu", "embeddings": "emb.npy"}, {"strategy": ["random"]})
    assert spec.points[0].config.embeddings == str(tmp_path / "emb.npy")  # the Ray tasks run elsewhere
    sweep._write_folders(spec, tmp_path / "out", sweep._check_points(spec, task_cpus=1))
    saved = tmp_path / "out" / spec.points[0].name / "config.json"
    assert json.loads(saved.read_text())["embeddings"] == str(tmp_path / "emb.npy")
    # a folder an earlier version wrote with the path as typed is the same point
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "embeddings": "emb.npy"}))
    sweep._check_out(spec, tmp_path / "out")


def test_an_unreachable_address_is_refused_before_ray_tries_to_connect(tmp_path, monkeypatch):
    from activecrl.al import sweep

    class NoRay:  # Ray's own connect retries for about a minute: it must never be reached
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            raise AssertionError("ray.init was called for an unreachable address")

    monkeypatch.setattr(sweep, "import_ray", NoRay)
    spec = expand_grid({"dataset": "digits", "device": "cpu"}, {"strategy": ["random"]})
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at --address 127.0.0.1:{port}"):
        run_sweep(spec, tmp_path / "out", address=f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="--address must be HOST:PORT"):
        run_sweep(spec, tmp_path / "out", address="no-port")
    assert not (tmp_path / "out").exists()


def test_without_ray_the_command_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "s.toml").write_text(SWEEP_TOML)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = runner.invoke(app, ["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, ActiveCRLError)
    assert 'pip install "activecrl[distributed]"' in str(result.exception)
    assert not (tmp_path / "o").exists()


def _append_many(out, trial, n):
    for stage in range(n):
        append_trial_record(Path(out), _record(trial, stage, pad="x" * 2000))


def test_parallel_trials_never_tear_interleave_or_lose_records(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, trial, 8)) for trial in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    expected = [(t, s) for t in range(4) for s in range(8)]
    assert [(r.trial, r.stage) for r in read_records(tmp_path)] == expected
    lines = (tmp_path / RESULTS_FILE).read_text().splitlines()  # the merged view is complete too
    assert [(r["trial"], r["stage"]) for r in map(json.loads, lines)] == expected


def test_read_records_keeps_a_stage_once_and_reads_old_folders(tmp_path):
    old = [_record(0, 0).to_json(), _record(0, 1).to_json()]
    (tmp_path / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))  # a run folder of before
    assert [r.to_json() for r in read_records(tmp_path)] == old
    append_trial_record(tmp_path, _record(1, 0))
    append_trial_record(tmp_path, _record(1, 0))  # a retried task writing the same stage again
    assert [(r.trial, r.stage) for r in read_records(tmp_path)] == [(0, 0), (0, 1), (1, 0)]
    assert len((tmp_path / RESULTS_FILE).read_text().splitlines()) == 3


def _load_counting(data_dir, counter):
    from activecrl.data import load_dataset

    load_dataset("slow_digits_for_test", data_dir=data_dir)


def test_concurrent_first_loads_decode_once(tmp_path):
    from activecrl.data import DATASETS, load_dataset

    counter = tmp_path / "decodes"

    def slow_digits(data_dir, download):
        with open(counter, "a") as handle:
            handle.write("x")
        time.sleep(0.5)
        return load_dataset("digits", cache=False)

    if "slow_digits_for_test" not in DATASETS:
        DATASETS.register("slow_digits_for_test")(slow_digits)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_load_counting, args=(tmp_path / "cache", counter)) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    assert counter.read_text() == "x"


# ----------------------------------------------------------------------------------------------
# on one local Ray instance shared by the tests below
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    ray = pytest.importorskip("ray")  # the optional extra; CI installs it through .[test]
    env = {"ACTIVECRL_DATA": str(tmp_path_factory.getbasetemp() / "data"),  # conftest's data dir
           KILL_ONCE_ENV: str(tmp_path_factory.mktemp("kill") / "arm"), "OMP_NUM_THREADS": "1",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the workers of the instance inherit this environment
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, logging_level="ERROR")
    yield Path(env[KILL_ONCE_ENV])
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def reference(ray_instance, tmp_path_factory):
    """One uninterrupted sweep of SWEEP_TOML, run through the CLI."""
    base = tmp_path_factory.mktemp("reference")
    (base / "sweep.toml").write_text(SWEEP_TOML)
    result = runner.invoke(app, ["sweep", "--config", str(base / "sweep.toml"), "--out", str(base / "out")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "2 of 2 grid points finished" in result.output
    return base


def test_sweep_equals_runs_one_by_one(reference, tmp_path):
    spec = load_sweep(reference / "sweep.toml")
    (tmp_path / "base.toml").write_text(SWEEP_TOML.split("[grid]")[0])
    for point in spec.points:
        swept = reference / "out" / point.name
        single = tmp_path / point.name
        result = runner.invoke(app, ["--threads", "1", "run", "--config", str(tmp_path / "base.toml"),
                                     "--strategy", point.config.strategy, "--out", str(single)])
        assert result.exit_code == 0, (result.output, result.exception)
        assert _strip(read_records(swept)) == _strip(read_records(single))
        assert len(read_records(swept)) == 4  # 2 trials x 2 stages
        config = json.loads((swept / "config.json").read_text())
        assert config.pop("sweep") == {"point": point.index, "of": 2, "values": {"strategy": point.config.strategy}}
        single_config = json.loads((single / "config.json").read_text())
        # the option differs (the single run: --threads 1; the sweep: automatic), the count it ran with does not
        assert (config.pop("threads"), single_config.pop("threads")) == (None, 1)
        assert config == single_config and config["threads_used"] == 1
        # a grid point's folder is a run folder: summary, plot and resume take it as it is
        assert "area" in runner.invoke(app, ["summary", str(swept)]).output
        result = runner.invoke(app, ["run", "--resume", "--out", str(swept)])
        assert result.exit_code == 0, (result.output, result.exception)
        assert len((swept / RESULTS_FILE).read_text().splitlines()) == 4  # nothing redone


def test_rerun_skips_finished_work_and_refuses_another_grid(reference, tmp_path):
    out = reference / "out"
    before = {p: (p / RESULTS_FILE).read_text() for p in out.iterdir() if p.is_dir()}
    spec = load_sweep(reference / "sweep.toml")
    statuses = run_sweep(spec, out)
    assert [s.state for s in statuses] == ["finished"] * 2
    assert {p: (p / RESULTS_FILE).read_text() for p in before} == before
    other = expand_grid(spec.base, {"strategy": ["entropy"]})
    with pytest.raises(ConfigError, match="holds another sweep"):
        run_sweep(other, out)


def test_rerun_finishes_what_an_interrupted_sweep_left(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference / "out", out)
    first, second = (out / p.name for p in load_sweep(reference / "sweep.toml").points)
    (first / "trials" / "trial1.jsonl").unlink()  # trial 1 of the first point never recorded a stage
    lines = (second / "trials" / "trial0.jsonl").read_text().splitlines(keepends=True)
    (second / "trials" / "trial0.jsonl").write_text(lines[0] + lines[1][:20])  # killed while writing stage 1
    for folder in (first, second):
        (folder / RESULTS_FILE).unlink()
    statuses = run_sweep(load_sweep(reference / "sweep.toml"), out)
    assert [s.state for s in statuses] == ["finished"] * 2
    for folder in (first, second):
        assert _strip(read_records(folder)) == _strip(read_records(reference / "out" / folder.name))
        assert (folder / RESULTS_FILE).read_text().count("\n") == 4


def test_a_killed_worker_is_retried_and_the_sweep_finishes(reference, ray_instance, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference / "out", out)
    first = load_sweep(reference / "sweep.toml").points[0].name
    shutil.rmtree(out / first / "trials")  # only the first point's 2 trials run again
    (out / first / RESULTS_FILE).unlink()
    ray_instance.write_text("armed")  # the first task to record a stage SIGKILLs its own worker
    statuses = run_sweep(load_sweep(reference / "sweep.toml"), out)
    assert not ray_instance.exists(), "no task killed itself"
    assert [s.state for s in statuses] == ["finished"] * 2
    for point in statuses:
        assert _strip(read_records(out / point.name)) == _strip(read_records(reference / "out" / point.name))


def test_a_failed_point_does_not_stop_the_others(ray_instance, tmp_path):
    toml = SWEEP_TOML.replace("trials = 2", "trials = 1").replace("stages = 2", "stages = 1")
    (tmp_path / "s.toml").write_text(toml.replace('strategy = ["random", "least_conf"]',
                                                  'strategy = ["random"]\ntrain.lr = [0.05, 1e30]'))
    result = runner.invoke(app, ["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "1 of 2 grid points finished" in result.output
    assert "failed" in result.output and "lower --lr" in result.output.replace("\n", "")
    assert len(read_records(tmp_path / "out" / "0-strategy=random-train.lr=0.05")) == 1


def test_cluster_checks(ray_instance, tmp_path):
    spec = expand_grid({"dataset": "digits", "device": "cpu"}, {"strategy": ["random"]})
    with pytest.raises(ConfigError, match="--gpus-per-trial 1 asks for more GPUs than any machine.*\\(0\\)"):
        run_sweep(spec, tmp_path / "out", gpus_per_trial=1)
    with pytest.raises(ConfigError, match="--cpus-per-trial 64 asks for more CPUs"):
        run_sweep(spec, tmp_path / "out", cpus_per_trial=64)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a sweep folder"):
        run_sweep(spec, tmp_path / "other")
    assert not (tmp_path / "out").exists()


def _tagged_pids(tag: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and tag.encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_rerun_equals_uninterrupted(reference, tmp_path):
    """Needs its own Ray instance (the killed driver's), so it takes about half a minute more."""
    out = tmp_path / "out"
    tag = f"ACTIVECRL_TEST_TAG={uuid.uuid4().hex}"
    env = {**os.environ, tag.split("=")[0]: tag.split("=")[1], KILL_ONCE_ENV: ""}
    driver = subprocess.Popen([sys.executable, "-m", "activecrl", "sweep", "--config", str(reference / "sweep.toml"),
                               "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("*/trials/*.jsonl")) and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before the test could kill it"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        for pid in _tagged_pids(tag):  # the killed driver's Ray processes (they exit on their own, slowly)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    partial = sum(len(read_records(p)) for p in out.iterdir() if p.is_dir())
    assert 1 <= partial < 8
    statuses = run_sweep(load_sweep(reference / "sweep.toml"), out)  # the same sweep, rerun
    assert [s.state for s in statuses] == ["finished"] * 2
    for point in statuses:
        assert _strip(read_records(out / point.name)) == _strip(read_records(reference / "out" / point.name))
        assert (out / point.name / RESULTS_FILE).read_text().count("\n") == 4

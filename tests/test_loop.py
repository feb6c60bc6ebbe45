import json

import numpy as np
import torch
import pytest

from activecrl.core.errors import ConfigError, RegistryError
from activecrl.evaluation.metrics import METRIC_NAMES
from activecrl.al.loop import ALConfig, LoopCallbacks, read_records, run_active_learning
from activecrl.training.trainers import TrainConfig
from tests.conftest import make_blobs_dataset

TINY = dict(dataset="blobs", model="small_cnn", trainer="crl", strategy="least_conf", initial=20, budget=15,
            stages=3, trials=2, seed=7, device="cpu", train=TrainConfig(epochs=2, batch_size=16, milestones=(0.6, 0.8)))


def _config(**changes):
    return ALConfig(**{**TINY, **changes})


def test_loop_end_to_end(tmp_path):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    records = run_active_learning(_config(), tmp_path / "run", dataset=ds)
    assert [(r.trial, r.stage) for r in records] == [(t, s) for t in range(2) for s in range(3)]
    for trial in range(2):
        mine = [r for r in records if r.trial == trial]
        labeled = set(mine[0].initial)
        assert len(labeled) == 20 and mine[0].seed == 7 + trial
        for r in mine:
            assert r.n_labeled == len(labeled)
            q = r.queried
            if r.stage < 2:
                assert len(q) == 15 and len(set(q)) == 15
                assert not labeled & set(q)  # never an already-labeled index
                assert all(0 <= i < 150 for i in q)  # training split only
            else:
                assert q == []
            assert set(r.metrics) == set(METRIC_NAMES)
            for value in (*r.metrics.values(), r.train_seconds, r.query_seconds):
                assert isinstance(value, float)
            labeled |= set(q)
    assert records[0].initial != records[3].initial  # trials differ
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] == "least_conf" and config["train"]["epochs"] == 2


def test_same_seed_same_queries(tmp_path):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    a = run_active_learning(_config(trials=1), tmp_path / "a", dataset=ds)
    b = run_active_learning(_config(trials=1), tmp_path / "b", dataset=ds)
    assert [r.queried for r in a] == [r.queried for r in b]
    assert [r.metrics["accuracy"] for r in a] == [r.metrics["accuracy"] for r in b]


def test_existing_out_is_never_overwritten(tmp_path):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    run_active_learning(_config(trials=1, stages=1), tmp_path / "run", dataset=ds)
    before = (tmp_path / "run" / "results.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run") as info:
        run_active_learning(_config(trials=1, stages=1), tmp_path / "run", dataset=ds)
    # run's own remedy (it has --resume, not --overwrite)
    assert f"activecrl run --resume --out {tmp_path / 'run'}" in str(info.value)
    assert "--overwrite" not in str(info.value)
    assert (tmp_path / "run" / "results.jsonl").read_text() == before


class _Crash(LoopCallbacks):
    def __init__(self, after):
        self.after, self.count = after, 0

    def stage_end(self, record):
        self.count += 1
        if self.count == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("warm_start", [False, True])
def test_resume_equals_uninterrupted(tmp_path, warm_start):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    cfg = _config(warm_start=warm_start)
    full = run_active_learning(cfg, tmp_path / "full", dataset=ds)
    with pytest.raises(KeyboardInterrupt):
        run_active_learning(cfg, tmp_path / "cut", dataset=ds, callbacks=_Crash(after=4))
    assert len(read_records(tmp_path / "cut")) == 4
    # a torn line from a crash mid-write is ignored, then repaired on the next append
    with open(tmp_path / "cut" / "results.jsonl", "a") as handle:
        handle.write('{"trial": 1, "sta')
    resumed = run_active_learning(ALConfig(device="cpu"), tmp_path / "cut", dataset=ds, resume=True)

    def strip(rs):
        return [{k: v for k, v in r.to_json().items() if not k.endswith(("_seconds", "_mib"))} for r in rs]

    assert strip(resumed) == strip(full)


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(ConfigError, match="--resume needs an earlier run"):
        run_active_learning(_config(), tmp_path / "none", resume=True, dataset=make_blobs_dataset())


def test_pool_subset_and_exhausted_pool(tmp_path):
    ds = make_blobs_dataset(n_train=60, n_test=30)
    records = run_active_learning(_config(strategy="entropy", initial=30, budget=15, stages=3, trials=1,
                                          pool_subset=25), tmp_path / "r", dataset=ds)
    assert [len(r.queried) for r in records] == [15, 15, 0]  # the last query takes the whole pool
    assert records[-1].n_labeled == 60


def test_budget_larger_than_the_pool_is_refused_like_an_oversized_seed_set(tmp_path):
    ds = make_blobs_dataset(n_train=60, n_test=30)
    # 30 + 20 x 2 = 70 labels of 60: refused before anything is written, not clipped in the last stage
    with pytest.raises(ConfigError, match=r"initial \+ budget x \(stages - 1\) must be at most the training split "
                                          r"size 60, got 30 \+ 20 x 2 = 70 instead; lower --budget \(at most 15"):
        run_active_learning(_config(initial=30, budget=20, stages=3, trials=1), tmp_path / "r", dataset=ds)
    with pytest.raises(ConfigError, match="initial must be at most the training split size 60"):
        run_active_learning(_config(initial=61, trials=1), tmp_path / "r", dataset=ds)
    assert not (tmp_path / "r").exists()


def test_run_records_its_thread_count_and_resume_keeps_it(tmp_path, monkeypatch):
    import torch

    from activecrl.al.loop import resume_config

    import activecrl.al.loop as loop_module

    applied = []

    class Recording(loop_module.torch_threads):
        # records the count without changing torch's: running 2 OpenMP threads here would leave a
        # thread pool that a test forking later (test_sweep) could deadlock on
        def __enter__(self):
            applied.append(self.n)
            return self.n

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(loop_module, "torch_threads", Recording)
    ds = make_blobs_dataset(n_train=150, n_test=40)
    run_active_learning(_config(trials=1, stages=2, threads=2), tmp_path / "two", dataset=ds)
    assert applied == [2]  # the stages run inside torch_threads(2)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["threads_used"] == 2
    run_active_learning(_config(trials=1, stages=1), tmp_path / "auto", dataset=ds)
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert saved["threads_used"] == 1 and saved["threads"] is None  # small_cnn: 1 thread automatically
    # CPU results depend on the thread count: a resume that would change it is refused, naming the option
    with pytest.raises(ConfigError, match="--threads must be 1 .* got 3 instead: .*a CPU run keeps its saved thread "
                                          "count.*pass --threads 1"):
        run_active_learning(_config(threads=3), tmp_path / "auto", dataset=ds, resume=True)
    # without --threads it continues with the saved count, even where the automatic count differs
    # (e.g. on a machine with more CPUs; here: a "larger" model)
    monkeypatch.setattr("activecrl.core.runtime.PARAMETERS_PER_THREAD", 1000)
    monkeypatch.setattr("activecrl.core.runtime.available_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_active_learning(_config(), tmp_path / "auto", dataset=ds, resume=True)
    assert applied[-1] == 1
    # the saved request is kept (2 stays 2), and --threads may be given again on resume
    run_active_learning(_config(threads=None), tmp_path / "two", dataset=ds, resume=True)
    assert len(read_records(tmp_path / "two")) == 2
    assert resume_config(tmp_path / "two", {"threads": 2, "stages": 2}).threads == 2


def test_resume_config_accepts_equal_options_and_names_different_ones(tmp_path):
    from activecrl.al.loop import resume_config

    ds = make_blobs_dataset(n_train=150, n_test=40)
    run_active_learning(_config(trials=1, stages=1), tmp_path / "r", dataset=ds)
    same = resume_config(tmp_path / "r", {"strategy": "least_conf", "trials": 1, "device": "cpu",
                                          "train": {"epochs": 2, "milestones": [0.6, 0.8]}, "seed": None})
    assert same.trials == 1 and same.train.epochs == 2
    assert resume_config(tmp_path / "r", {"device": "cuda:1", "data_dir": "/elsewhere"}).device == "cuda:1"
    with pytest.raises(ConfigError) as info:
        resume_config(tmp_path / "r", {"trials": 1, "stages": 4, "train": {"epochs": 3, "lr": 0.1}})
    message = str(info.value)
    assert "--stages 4 (saved: 1)" in message and "--epochs 3 (saved: 2)" in message
    assert "--trials" not in message and "--lr" not in message  # equal to the saved values


def test_user_strategy_by_path(tmp_path, monkeypatch):
    (tmp_path / "my_strats.py").write_text(
        "import numpy as np\n"
        "from activecrl.strategies import Strategy\n"
        "class Lowest(Strategy):\n"
        "    name = 'lowest'\n"
        "    def select(self, context, budget, rng):\n"
        "        return np.sort(context.pool.indices.numpy())[:budget]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = make_blobs_dataset(n_train=150, n_test=40)
    records = run_active_learning(_config(strategy="my_strats:Lowest", trials=1, stages=2), tmp_path / "r", dataset=ds)
    initial = set(records[0].initial)
    expected = [i for i in range(150) if i not in initial][:15]
    assert records[0].queried == expected


@pytest.mark.parametrize("bad", [dict(initial=0), dict(stages=0), dict(budget=-1), dict(pool_subset=0),
                                 dict(dropout=1.5)])
def test_config_validation(bad):
    with pytest.raises(ConfigError, match="got"):
        _config(**bad)


def test_mc_dropout_requires_and_gets_dropout(tmp_path):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    with pytest.raises(ConfigError, match="needs dropout"):
        run_active_learning(_config(strategy="mc_dropout", dropout=0.0), tmp_path / "a", dataset=ds)
    run_active_learning(_config(strategy="mc_dropout", trials=1, stages=2), tmp_path / "b", dataset=ds)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["dropout_used"] == pytest.approx(0.3)


def test_coreset_in_the_loop(tmp_path):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    records = run_active_learning(_config(strategy="coreset", trials=1, stages=2), tmp_path / "r", dataset=ds)
    assert len(records[0].queried) == 15 and not set(records[0].queried) & set(records[0].initial)


def test_results_summary_and_plot(tmp_path):
    from activecrl.al.runs import load_run, plot_curves

    ds = make_blobs_dataset(n_train=150, n_test=40)
    run_active_learning(_config(), tmp_path / "run", dataset=ds)
    s = load_run(tmp_path / "run")
    assert s.n_labeled.tolist() == [20, 35, 50] and s.n_trials.tolist() == [2, 2, 2]
    records = read_records(tmp_path / "run")
    stage0 = [r.metrics["accuracy"] for r in records if r.stage == 0]
    assert s.mean["accuracy"][0] == pytest.approx(np.mean(stage0))
    assert s.std["accuracy"][0] == pytest.approx(np.std(stage0))
    x, y = s.n_labeled, s.mean["accuracy"]
    assert s.area_under_curve() == pytest.approx(np.trapezoid(y, x) / (x[-1] - x[0]))
    by_trial = s.area_by_trial()
    assert len(by_trial) == 2 and by_trial.mean() == pytest.approx(s.area_under_curve())  # same x per trial
    path = plot_curves([s], tmp_path / "c.png")
    assert path.stat().st_size > 1000


def test_random_skips_the_pool_forward_pass(tmp_path, monkeypatch):
    import activecrl.al.loop as loop

    calls = []
    real_predict = loop.predict
    monkeypatch.setattr(loop, "predict", lambda *a, **k: calls.append(len(a[2]) if len(a) > 2 and a[2] is not None
                                                                       else None) or real_predict(*a, **k))
    ds = make_blobs_dataset(n_train=150, n_test=40)
    records = run_active_learning(_config(strategy="random", trials=1, stages=2), tmp_path / "r", dataset=ds)
    assert calls == [None, None]  # only the two test-split evaluations, never the pool
    assert len(records[0].queried) == 15


def test_written_files_are_world_readable(tmp_path):
    import os
    import stat

    from activecrl.core.io import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644  # not mkstemp's private 0600


@pytest.mark.parametrize("bad, error, message", [
    (dict(model="resnet99"), RegistryError, "unknown model 'resnet99'.*valid"),
    (dict(strategy="nope"), RegistryError, "unknown strategy 'nope'.*valid"),
    (dict(trainer="nope"), RegistryError, "unknown trainer 'nope'.*valid"),
    (dict(initial=10_000), ConfigError, "initial must be at most the training split size")])
def test_bad_options_create_nothing(tmp_path, bad, error, message):
    with pytest.raises(error, match=message):
        run_active_learning(_config(**bad), tmp_path / "run", dataset=make_blobs_dataset())
    assert not (tmp_path / "run").exists()  # the same --out works once the option is fixed


@pytest.mark.parametrize("bad, message", [(dict(initial=1), "initial must be an integer >= 2"),
                                          (dict(seed=-1), r"seed must be an integer in \[0, 2\*\*63\)"),
                                          (dict(budget=20, pool_subset=10), "pool_subset must be at least the budget")])
def test_more_config_validation(bad, message):
    with pytest.raises(ConfigError, match=message):
        _config(**bad)


def test_model_without_dropout_support_is_refused_for_mc_dropout(tmp_path):
    from activecrl.models import MODELS, SmallCNN, register_model

    class NoDropoutCNN(SmallCNN):
        supports_dropout = False

    register_model("no_dropout_cnn_test")(lambda *, num_classes, in_channels, image_size, dropout:
                                          NoDropoutCNN(num_classes=num_classes, in_channels=in_channels,
                                                       dropout=dropout))
    try:
        with pytest.raises(ConfigError, match="cannot take dropout"):
            run_active_learning(_config(model="no_dropout_cnn_test", strategy="mc_dropout"), tmp_path / "r",
                                dataset=make_blobs_dataset())
        assert not (tmp_path / "r").exists()
    finally:
        MODELS.unregister("no_dropout_cnn_test")


def test_each_stage_records_its_peak_memory(tmp_path):
    import mmap

    from activecrl.core.runtime import PeakMemory

    records = run_active_learning(_config(trials=1), tmp_path / "run", dataset=make_blobs_dataset(n_train=150, n_test=40))
    for r in records:
        assert r.train_peak_rss_mib > 10  # a torch process holds far more than 10 MiB
        assert np.isnan(r.train_peak_cuda_mib) and np.isnan(r.query_peak_cuda_mib)  # run on the CPU
    assert [np.isnan(r.query_peak_rss_mib) for r in records] == [False, False, True]  # no query after the last stage
    with PeakMemory("cpu") as before:
        pass
    with PeakMemory("cpu") as peak:
        # 64 MiB of fresh pages touched inside the step (an anonymous mapping: never heap memory
        # that is already resident), unmapped after it
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), mmap.PAGESIZE):
            block[offset] = 1
    block.close()
    with PeakMemory("cpu") as after:
        pass
    if peak.resettable:  # Linux: each step's peak starts from the resident memory at its start
        assert peak.rss_mib >= before.rss_mib + 60, (before.rss_mib, peak.rss_mib)
        assert after.rss_mib < peak.rss_mib - 60, (peak.rss_mib, after.rss_mib)  # the block is gone again
    else:  # elsewhere: the process's peak, which the block raised at most to this
        assert after.rss_mib >= peak.rss_mib >= before.rss_mib


def test_peak_memory_on_cuda_resets_and_reads_the_allocator_peak(monkeypatch):
    """The CUDA half without a GPU: reset when the step starts, the allocator's peak read when it ends."""
    from activecrl.core.runtime import PeakMemory

    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: calls.append(("read", device)) or 3 * 2**20)
    with PeakMemory("cuda:1") as peak:
        assert calls == [("reset", torch.device("cuda:1"))] and np.isnan(peak.cuda_mib)
    assert calls[1] == ("read", torch.device("cuda:1")) and peak.cuda_mib == 3.0
    with PeakMemory("cpu") as cpu:
        pass
    assert len(calls) == 2 and np.isnan(cpu.cuda_mib)  # the allocator is not touched on other devices

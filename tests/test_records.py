"""StageRecord: the one type of a results.jsonl line, its JSON round trip, tolerance of other
versions' keys, and the committed runs under results/ still loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from activecrl.core.errors import DataError
from activecrl.evaluation.metrics import METRIC_NAMES
from activecrl.al.records import StageRecord, append_record, read_records
from activecrl.al.runs import load_run

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted(p.parent for p in (ROOT / "results").rglob("results.jsonl"))


def _line(trial=0, stage=0, **changes):
    line = {"trial": trial, "seed": trial, "stage": stage, "n_labeled": 20 + 10 * stage,
            **{m: 0.1 * (i + 1) for i, m in enumerate(METRIC_NAMES)},
            "train_seconds": 1.5, "query_seconds": 0.25, "final_train_loss": 0.75, "queried": [3, 1]}
    if stage == 0:
        line["initial"] = [0, 2]
    line.update(changes)
    return line


def test_epoch_losses_round_trip_and_older_records_load_without_them():
    line = _line(epoch_losses=[1.25, 0.5, None])
    record = StageRecord.from_json(line)
    assert record.epoch_losses[:2] == [1.25, 0.5] and math.isnan(record.epoch_losses[2])
    assert record.to_json()["epoch_losses"] == [1.25, 0.5, None] and "epoch_losses" not in record.extra
    older = StageRecord.from_json(_line())
    assert older.epoch_losses is None and "epoch_losses" not in older.to_json()


def test_round_trip_keeps_the_flat_layout():
    line = _line()
    record = StageRecord.from_json(line)
    assert record.metrics == {m: line[m] for m in METRIC_NAMES} and record.initial == [0, 2]
    assert record.value("accuracy") == line["accuracy"] and record.value("train_seconds") == 1.5
    assert json.dumps(record.to_json()) == json.dumps(line)  # same keys, same order
    later = StageRecord.from_json(_line(stage=1))
    assert later.initial is None and "initial" not in later.to_json()


def test_other_versions_keys_are_tolerated(tmp_path):
    # a newer version's metric (eaugrc) and field (note); an older version without ece and augrc
    newer = _line(eaugrc=0.05, note={"by": "v9"})
    older = _line(trial=1)
    del older["ece"], older["augrc"]
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(newer) + "\n" + json.dumps(older) + "\n")
    a, b = read_records(tmp_path)
    assert a.metrics["eaugrc"] == 0.05 and a.extra == {"note": {"by": "v9"}}
    assert a.to_json() == newer  # rewritten with the same content (metrics grouped together)
    assert "ece" not in b.metrics and b.value("ece") is None
    (tmp_path / "config.json").write_text(json.dumps({"strategy": "random", "trainer": "crl"}))
    summary = load_run(tmp_path)
    assert summary.mean["eaugrc"][0] != summary.mean["eaugrc"][0]  # NaN: one trial lacks it (mean of 0.05, nan)
    assert summary.mean["augrc"][0] != summary.mean["augrc"][0]  # the older run predates AUGRC
    assert summary.mean["ece"][0] != summary.mean["ece"][0]
    assert summary.mean["accuracy"][0] == pytest.approx(newer["accuracy"])
    # a NaN metric is written as null and read back as NaN
    nan = StageRecord.from_json(_line(aurc=None))
    assert math.isnan(nan.metrics["aurc"]) and nan.to_json()["aurc"] is None


def test_malformed_lines_say_what_is_wrong(tmp_path):
    path = tmp_path / "results.jsonl"
    bad = _line()
    del bad["queried"]
    path.write_text(json.dumps(_line()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match="line 2: .* without queried"):
        read_records(tmp_path)
    path.write_text(json.dumps(_line(trial="x")) + "\n")
    with pytest.raises(DataError, match="malformed"):
        read_records(tmp_path)
    path.write_text("{not json\n" + json.dumps(_line()) + "\n")
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        read_records(tmp_path)


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, StageRecord.from_json(_line()))
    with open(path, "a") as handle:
        handle.write('{"trial": 0, "sta')  # a crash mid-write
    assert len(read_records(tmp_path)) == 1
    append_record(path, StageRecord.from_json(_line(stage=1)))
    assert [r.stage for r in read_records(tmp_path)] == [0, 1]


@pytest.mark.skipif(not COMMITTED, reason="no committed active-learning runs in this checkout")
@pytest.mark.parametrize("run", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_runs_still_load(run):
    lines = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
    records = read_records(run)
    assert len(records) == len(lines) > 0
    for line, record in zip(lines, records):
        assert record.to_json() == line  # an exact round trip of what an earlier version wrote
    summary = load_run(run)
    assert np.all(np.isfinite(summary.mean["accuracy"])) and summary.n_labeled[0] == records[0].n_labeled


def test_memory_fields_round_trip_and_are_absent_where_not_measured():
    line = _line(stage=1, train_peak_rss_mib=512.5, query_peak_rss_mib=400.0)
    line["queried"] = line.pop("queried")  # the layout: memory fields before queried
    record = StageRecord.from_json(line)
    assert record.train_peak_rss_mib == 512.5 and "train_peak_rss_mib" not in record.metrics
    assert math.isnan(record.train_peak_cuda_mib)  # a CPU run: no CUDA peak, and no key for it
    assert json.dumps(record.to_json()) == json.dumps(line)
    assert "train_peak_rss_mib" not in StageRecord.from_json(_line()).to_json()  # an older record stays as it was

"""``StageRecord``: one line of a run's ``results.jsonl`` (one trained stage of one trial).

The loop writes them (``append_record``), ``activecrl.al.runs`` reads them (``read_records``) for
summaries, plots and the CLI tables. The line layout is flat JSON, as written since the first
version: ``trial, seed, stage, n_labeled``, the test metrics (``metrics.METRIC_NAMES``),
``train_seconds, query_seconds, final_train_loss``, the peak memory of the stage's training and
query (``MEMORY_FIELDS``: MiB, absent where not measured), ``epoch_losses`` (the mean training loss
of each epoch; absent in records older than this field), ``queried`` and, on stage 0, ``initial``
(the seed set). Reading is tolerant both ways: any other numeric key is a metric (a newer version's, e.g.
``augrc``), a metric an older version did not compute is simply absent, and other unknown keys are
kept in ``extra``; writing a record read this way gives back the same keys.

Crash safety: a line is appended with one write + fsync, and a torn last line (a crash while
writing it) is ignored on reading and cut off before the next append.

Parallel trials (``activecrl sweep``): the loop appends trial ``t``'s records to
``trials/trial<t>.jsonl``, a file only that trial writes (``append_trial_record``), then rebuilds
``results.jsonl`` from all trial files into a temp file renamed over it (``merge_records``). No
two processes ever append to one file, so nothing tears or interleaves, also on NFS, where
``O_APPEND`` from two clients can overwrite each other and locks are unreliable. Reading a run
folder takes the union of the trial files and ``results.jsonl`` (older runs have only that),
one record per (trial, stage).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from activecrl.core.errors import DataError
from activecrl.core.io import atomic_write_text, to_jsonable

logger = logging.getLogger(__name__)

__all__ = ["StageRecord", "MEMORY_FIELDS", "RESULTS_FILE", "TRIALS_DIR", "read_records", "append_record",
           "append_trial_record", "merge_records"]

RESULTS_FILE = "results.jsonl"
TRIALS_DIR = "trials"  # trials/trial<t>.jsonl: the records of trial t, written by that trial only

_REQUIRED = ("trial", "seed", "stage", "n_labeled", "queried")
#: the peak memory of a stage's training and of its query, in MiB (``activecrl.core.runtime.PeakMemory``):
#: the resident high-water mark of the process, reset when the step starts where Linux allows it (else the
#: process's peak since it started), and on CUDA ``torch.cuda.max_memory_allocated`` since the step started
#: (NaN, absent from the file, on other devices and in records older than these fields)
MEMORY_FIELDS = ("train_peak_rss_mib", "query_peak_rss_mib", "train_peak_cuda_mib", "query_peak_cuda_mib")
_TIMINGS = ("train_seconds", "query_seconds", "final_train_loss", *MEMORY_FIELDS)


@dataclass
class StageRecord:
    trial: int
    seed: int  # the trial's seed (base seed + trial)
    stage: int
    n_labeled: int  # labeled-set size the stage's model was trained on
    metrics: dict[str, float]  # test metrics by name (METRIC_NAMES, plus any a newer version added)
    train_seconds: float = math.nan
    query_seconds: float = math.nan
    final_train_loss: float = math.nan
    train_peak_rss_mib: float = math.nan  # MEMORY_FIELDS: the peak memory of the stage's training and query
    query_peak_rss_mib: float = math.nan
    train_peak_cuda_mib: float = math.nan
    query_peak_cuda_mib: float = math.nan
    queried: list[int] = field(default_factory=list)  # training-split indices labeled after this stage
    epoch_losses: list[float] | None = None  # the mean training loss per epoch (None: an older record)
    initial: list[int] | None = None  # the seed set (stage 0 only)
    extra: dict = field(default_factory=dict)  # unknown non-numeric keys of a newer version, kept as read

    def value(self, name: str) -> float | None:
        """A metric or a timing by name (``"accuracy"``, ``"train_seconds"``); None when absent."""
        if name in _TIMINGS or name in ("n_labeled", "trial", "stage", "seed"):
            return getattr(self, name)
        return self.metrics.get(name)

    def memory(self) -> dict[str, float]:
        """The measured ``MEMORY_FIELDS`` (an older record, or CUDA's on another device, has none)."""
        return {k: getattr(self, k) for k in MEMORY_FIELDS if not math.isnan(getattr(self, k))}

    def to_json(self) -> dict:
        """The flat ``results.jsonl`` layout (JSON-safe: NaN/inf become null)."""
        out = {"trial": self.trial, "seed": self.seed, "stage": self.stage, "n_labeled": self.n_labeled,
               **self.metrics, "train_seconds": self.train_seconds, "query_seconds": self.query_seconds,
               "final_train_loss": self.final_train_loss, **self.memory(), "queried": list(self.queried)}
        if self.epoch_losses is not None:
            out["epoch_losses"] = list(self.epoch_losses)
        if self.initial is not None:
            out["initial"] = list(self.initial)
        out.update(self.extra)
        return to_jsonable(out)

    @classmethod
    def from_json(cls, values: dict) -> "StageRecord":
        """A record from one parsed line; raises DataError naming a missing or malformed key."""
        if not isinstance(values, dict):
            raise DataError(f"a results.jsonl line must be a JSON object, got {type(values).__name__} instead")
        missing = [k for k in _REQUIRED if k not in values]
        if missing:
            raise DataError(f"a results.jsonl line must have {', '.join(_REQUIRED)}, got one without "
                            f"{', '.join(missing)}")
        metrics, extra = {}, {}
        known = {*_REQUIRED, *_TIMINGS, "initial", "epoch_losses"}
        for key, value in values.items():
            if key in known:
                continue
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                metrics[key] = math.nan if value is None else float(value)  # null: a NaN metric
            else:
                extra[key] = value
        try:
            return cls(trial=int(values["trial"]), seed=int(values["seed"]), stage=int(values["stage"]),
                       n_labeled=int(values["n_labeled"]), metrics=metrics,
                       **{k: _float(values.get(k)) for k in _TIMINGS},
                       queried=[int(i) for i in values["queried"]],
                       initial=None if values.get("initial") is None else [int(i) for i in values["initial"]],
                       epoch_losses=None if values.get("epoch_losses") is None else
                       [_float(v) for v in values["epoch_losses"]],
                       extra=extra)
        except (TypeError, ValueError) as exc:
            raise DataError(f"a results.jsonl line has a malformed field ({exc}); the file was edited or "
                            "corrupted") from None


def _float(value) -> float:
    return math.nan if value is None else float(value)


def read_records(out_dir: Path | str) -> list[StageRecord]:
    """Complete records of a run folder, ordered by (trial, stage), or of one ``.jsonl`` file.

    A folder's records are those of its per-trial files and of ``results.jsonl`` (a merged view
    that can lag behind them, and the only file of older runs), one per (trial, stage) even if a
    retried trial wrote one twice. A torn last line (crash mid-write) is ignored.
    """
    path = Path(out_dir)
    if path.suffix == ".jsonl":
        return _read_file(path)
    unique: dict[tuple[int, int], StageRecord] = {}
    for file in [*sorted((path / TRIALS_DIR).glob("trial*.jsonl")), path / RESULTS_FILE]:
        for record in _read_file(file):  # the per-trial files first: they are the source
            unique.setdefault((record.trial, record.stage), record)
    return [unique[key] for key in sorted(unique)]


def _read_file(path: Path) -> list[StageRecord]:
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                logger.warning("ignoring a torn last line in %s (the run stopped while writing it)", path)
                continue
            raise DataError(f"{path} line {number} is not valid JSON; the file was edited or corrupted") from None
        try:
            records.append(StageRecord.from_json(values))
        except DataError as exc:
            raise DataError(f"{path} line {number}: {exc}") from None
    return records


def append_record(path: Path, record: StageRecord) -> None:
    """Append ``record`` as one line with one write + fsync: all there, or (torn) ignored."""
    line = (json.dumps(record.to_json()) + "\n").encode()
    with open(path, "ab") as handle:
        if handle.tell() > 0:
            _repair_tail(path, handle)
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _repair_tail(path: Path, handle) -> None:
    with open(path, "rb") as reader:
        reader.seek(-1, os.SEEK_END)
        if reader.read(1) != b"\n":  # a torn line from a crash: drop it before appending
            data = path.read_bytes()
            handle.truncate(data.rfind(b"\n") + 1)
            handle.seek(0, os.SEEK_END)


def append_trial_record(out_dir: Path | str, record: StageRecord) -> None:
    """Append ``record`` to its trial's own file in the run folder, then refresh ``results.jsonl``."""
    path = Path(out_dir) / TRIALS_DIR / f"trial{record.trial}.jsonl"
    path.parent.mkdir(exist_ok=True)
    append_record(path, record)
    merge_records(out_dir)


def merge_records(out_dir: Path | str, rounds: int = 5) -> list[StageRecord]:
    """Rewrite ``out_dir/results.jsonl`` as all records of the run folder, atomically (temp file + rename).

    Writers of different trials may merge at once. Each rename is atomic, so no reader sees a torn
    or interleaved file, but a writer whose view predates another's append can rename last. So a
    writer reads the files again after its rename and rewrites until they agree: whoever renames
    last leaves every record in. (``activecrl sweep`` also merges each point once more at its
    end, for a writer killed in between.)
    """
    out = Path(out_dir)
    records = read_records(out)
    text = "".join(json.dumps(r.to_json()) + "\n" for r in records)
    for _ in range(rounds):
        atomic_write_text(out / RESULTS_FILE, text)
        records = read_records(out)
        latest = "".join(json.dumps(r.to_json()) + "\n" for r in records)
        if latest == text:
            break
        text = latest
    return records


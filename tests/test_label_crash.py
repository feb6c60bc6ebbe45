"""Nothing lost, nothing corrupted: kill -9 a process that writes the project, several times, then check
the database's integrity and its invariants."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from activecrl.label import Project

WRITER = r"""
import sys
from pathlib import Path
from activecrl.label import Project
proj, folder, start = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
p = Project.open(proj)
for k in range(start, start + 1000):  # import file after file until killed
    f = folder / f"labels-{k}.csv"
    # a column of k makes every file new (the same file again would be a no-op)
    f.write_text("image,label,k\n" + "".join(f"{i}.png,{'cat' if (i + k) % 2 else 'dog'},{k}\n" for i in range(200)))
    p.import_labels(f, relabel=True)
    print(k, flush=True)
"""

INIT = r"""
import sys
from activecrl.label import Project
print("ready", flush=True)
Project.init(sys.argv[1], images=sys.argv[2], classes="cat,dog")
print("done", flush=True)
"""

ROUNDS = r"""
import sys
from activecrl.label import Project
from activecrl.label.rounds import next_round
p = Project.open(sys.argv[1])
while len(p.index_sets().pool) >= 12:  # round after round, answered at once by the oracle, until killed
    result = next_round(p, 3, audit=1, oracle=sys.argv[2])  # (or until the images left are kept for the test's round)
    print(result.batch.round, flush=True)
"""


def _invariants(path):
    con = sqlite3.connect(str(path / "project.db"))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    # every committed import is whole: its 200 annotations, and its labels all written or none changed
    per_import = con.execute(
        "SELECT i.id, i.n_labels, (SELECT COUNT(*) FROM annotations a WHERE a.import_id = i.id), "
        "(SELECT COUNT(*) FROM label_history h WHERE h.import_id = i.id) FROM imports i ORDER BY i.id").fetchall()
    assert all(n_ann == 200 for _, _, n_ann, _ in per_import)
    if per_import:  # the first import labels all 200; each later one flips all 200 or (same labels) none
        assert per_import[0][1:] == (200, 200, 0)
        assert all(n == hist and n in (0, 200) for _, n, _, hist in per_import[1:])
    n_imports = len(per_import)
    assert con.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == (200 if n_imports else 0)
    con.close()
    return n_imports


def _kill_after(args, delay, cwd, wait_for_first=False):
    """SIGKILL the child ``delay`` s after it started (or after its first line, once its imports are done)."""
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True, cwd=cwd)
    first = [proc.stdout.readline()] if wait_for_first else []
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out = proc.communicate()[0]
    return [x for x in first + out.split() if x.strip()]


def test_kill_during_imports_keeps_what_was_committed(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(200):
        Image.new("L", (4, 4), i).save(img / f"{i}.png")
    Project.init(tmp_path / "proj", images=img, classes="cat,dog").close()
    rng = np.random.default_rng(0)
    start, done_before = 0, 0
    for _ in range(3):
        printed = _kill_after([WRITER, str(tmp_path / "proj"), str(tmp_path), str(start)], rng.uniform(0, 0.4),
                              tmp_path, wait_for_first=True)
        n = _invariants(tmp_path / "proj")
        # everything reported as imported is there (a commit may have landed just before the kill)
        assert n >= done_before + len(printed)
        done_before, start = n, start + 1000
    with Project.open(tmp_path / "proj") as p:
        assert p.status().n_labeled == 200


def test_kill_during_init_leaves_no_half_project(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    for i in range(300):
        Image.new("L", (4, 4), i % 256).save(img / f"{i}.png")
    for delay in (0.05, 0.25):
        proj = tmp_path / f"proj{delay}"
        printed = _kill_after([INIT, str(proj), str(img)], delay, tmp_path, wait_for_first=True)[1:]
        if (proj / "project.db").exists():
            try:
                p = Project.open(proj)
            except Exception as exc:  # an interrupted init is named as such, and init may run again
                assert "interrupted" in str(exc) and printed == []
                Project.init(proj, images=img, classes="cat,dog").close()
                p = Project.open(proj)
            assert p.status().n_images == 300
            assert p.con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            p.close()
        else:
            assert printed == []


def _round_invariants(path):
    """A killed round leaves whole batches, labels only from answered batches and one model's predictions."""
    con = sqlite3.connect(str(path / "project.db"))
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    assert con.execute("SELECT COUNT(*) FROM batches WHERE status = 'open'").fetchone()[0] <= 1
    # every batch was written whole: its 3 picks and 1 audit image
    sizes = con.execute("SELECT b.id, COUNT(i.image_id), SUM(i.audit) FROM batches b LEFT JOIN batch_items i "
                        "ON i.batch_id = b.id GROUP BY b.id").fetchall()
    assert all(n == 4 and audit == 1 for _, n, audit in sizes), sizes
    # the oracle answers a batch in one import: the labels are exactly the answered batches' images
    labeled = {r[0] for r in con.execute("SELECT image_id FROM labels")}
    answered = {r[0] for r in con.execute("SELECT i.image_id FROM batch_items i JOIN batches b ON b.id = i.batch_id "
                                          "WHERE b.status = 'imported'")}
    assert labeled == answered
    assert con.execute("SELECT COUNT(DISTINCT model_version) FROM predictions").fetchone()[0] <= 1
    n_rounds = con.execute("SELECT COUNT(*) FROM batches WHERE status = 'imported'").fetchone()[0]
    con.close()
    return n_rounds, len(labeled)


def test_kill_during_rounds_leaves_a_project_the_next_round_continues(tmp_path):
    from tests.test_label_cli import CLASSES, make_images, write_labels

    truth = make_images(tmp_path / "photos", n=320)
    oracle = write_labels(tmp_path / "oracle.csv", truth, sorted(truth))
    Project.init(tmp_path / "proj", images=tmp_path / "photos", classes=",".join(CLASSES)).close()
    rng = np.random.default_rng(1)
    done_before = 0
    for _ in range(2):
        # killed after its first round, somewhere in a later one: training, recording predictions, writing
        printed = _kill_after([ROUNDS, str(tmp_path / "proj"), str(oracle)], rng.uniform(0, 2.5), tmp_path,
                              wait_for_first=True)
        n_rounds, n_labeled = _round_invariants(tmp_path / "proj")
        assert n_rounds >= done_before + len(printed) and n_labeled == 4 * n_rounds
        done_before = n_rounds
    with Project.open(tmp_path / "proj") as p:  # and the project goes on where the kill left it
        from activecrl.label.rounds import next_round

        result = next_round(p, 3, audit=1, oracle=oracle)
        assert result.imported is not None and p.status().n_labeled == 4 * (done_before + 1)
    assert _round_invariants(tmp_path / "proj")[0] == done_before + 1

"""The labeling project: init, batches, imports (CSV and Label Studio), status, export, bad input."""

import json
import shutil
import sqlite3
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from activecrl.core.errors import ActiveCRLError, ConfigError, DataError
from activecrl.label import Project
from activecrl.label.labelstudio import CONTROL, IMAGE_KEY, IMAGE_TAG, labeling_config, parse_export

FIXTURES = Path(__file__).parent / "data" / "labelstudio"


def make_images(folder, n=12, nested=True, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = folder / ("sub" if nested and i % 2 else "")
        sub.mkdir(exist_ok=True)
        Image.new("RGB", (8 + i, 6), (i * 10, 0, 0)).save(sub / f"{prefix}{i}.png")
    return folder


@pytest.fixture
def project(tmp_path):
    make_images(tmp_path / "img", nested=False, prefix="a", n=10)
    with Project.init(tmp_path / "proj", images=tmp_path / "img", classes="cat,dog", model="resnet18") as p:
        yield p


def write(path, text):
    path.write_text(text)
    return path


def test_init_registers_images_recursively(tmp_path):
    make_images(tmp_path / "img")
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    p = Project.init(tmp_path / "proj", images=tmp_path / "img", classes=["a", "b"], image_size=32, strategy="entropy")
    rows = p.con.execute("SELECT path, bytes, width, height, length(hash) FROM images ORDER BY path").fetchall()
    assert len(rows) == 12 and ("sub/1.png", (tmp_path / "img/sub/1.png").stat().st_size, 9, 6, 32) in rows
    assert p.defaults == {"image_size": 32, "strategy": "entropy"} and p.classes == ["a", "b"]
    assert p.con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert p.con.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    p.close()
    with Project.open(tmp_path / "proj") as q:
        assert q.status().n_images == 12
    with pytest.raises(ConfigError, match="already holds a project"):
        Project.init(tmp_path / "proj", images=tmp_path / "img", classes="a")


def test_init_with_known_labels_and_classes_file(tmp_path):
    make_images(tmp_path / "img", nested=False)
    classes = write(tmp_path / "classes.txt", "cat\n# comment\n\ndog\n")
    labels = write(tmp_path / "known.csv", "image,label\n0.png,cat\n1.png,dog\n")
    with Project.init(tmp_path / "p", images=tmp_path / "img", classes_file=classes, labels=labels) as p:
        assert p.status().labels_per_class == {"cat": 1, "dog": 1}


def test_bad_init_input(tmp_path):
    make_images(tmp_path / "img", n=3, nested=False)
    with pytest.raises(DataError, match="--images must be a folder.*does not exist"):
        Project.init(tmp_path / "p", images=tmp_path / "nope", classes="a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has none"):
        Project.init(tmp_path / "p", images=tmp_path / "empty", classes="a")
    with pytest.raises(DataError, match="--classes must name each class once.*cat"):
        Project.init(tmp_path / "p", images=tmp_path / "img", classes="cat,dog,cat")
    with pytest.raises(DataError, match="--classes-file must name at least one class"):
        Project.init(tmp_path / "p", images=tmp_path / "img", classes_file=write(tmp_path / "c.txt", "\n\n"))
    with pytest.raises(ConfigError, match="exactly one of --classes"):
        Project.init(tmp_path / "p", images=tmp_path / "img")
    for i in range(12):
        (tmp_path / "img" / f"broken{i:02d}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"got 12 that cannot be: broken00.png .*\(and 2 more\)"):
        Project.init(tmp_path / "p", images=tmp_path / "img", classes="a")
    assert not (tmp_path / "p").exists()  # nothing half-made
    with pytest.raises(ActiveCRLError, match="PROJECT must be a labeling project folder"):
        Project.open(tmp_path / "img")


def test_batch_is_reissued_until_imported(project, tmp_path):
    b = project.issue_batch(["a0.png", "a1.png"], ["cat", "dog"], [0.9, 0.6], audit=3, seed=0)
    assert b.round == 1 and sum(i.audit for i in b.items) == 3 and not b.reissued
    lines = (project.path / "batches/round-1.csv").read_text().splitlines()
    assert lines[0] == "image,suggested_label,confidence,audit" and lines[1] == "a0.png,cat,0.9,0"
    assert all(line.endswith(",,1") for line in lines[3:])  # audit rows: no suggestion to anchor on
    again = project.issue_batch(["a5.png"], ["cat"], [0.5], audit=1)
    assert again.reissued and again.items == b.items
    fresh = project.issue_batch(["a5.png"], ["cat"], [0.5], new=True)
    assert fresh.round == 1 and [i.image for i in fresh.items] == ["a5.png"]
    project.import_labels(write(tmp_path / "l.csv", "image,label\na5.png,dog\n"))
    assert project.issue_batch(["a6.png"], ["cat"], [0.5]).round == 2


def test_batch_bad_input(project):
    with pytest.raises(ConfigError, match="--budget must be at most the 10 unlabeled"):
        project.issue_batch([f"a{i}.png" for i in range(10)] + ["x"], [None] * 11, [None] * 11)
    with pytest.raises(DataError, match="unlabeled image of the project.*zzz.png"):
        project.issue_batch(["zzz.png"], [None], [None])
    with pytest.raises(ConfigError, match="--audit must be between 0 and the 9"):
        project.issue_batch(["a0.png"], [None], [None], audit=10)
    with pytest.raises(ConfigError, match="--format"):
        project.issue_batch(["a0.png"], [None], [None], fmt="xml")


def test_labelstudio_tasks_and_config(project, tmp_path):
    project.issue_batch(["a0.png"], ["dog"], [0.75], audit=1, seed=1, fmt="labelstudio", document_root=tmp_path)
    tasks = json.loads((project.path / "batches/round-1.json").read_text())
    assert tasks[0]["data"] == {"image": "/data/local-files/?d=img/a0.png", IMAGE_KEY: "a0.png", "activecrl_audit": False}
    pred = tasks[0]["predictions"][0]
    assert pred["score"] == 0.75 and pred["result"][0]["value"] == {"choices": ["dog"]}
    assert (pred["result"][0]["from_name"], pred["result"][0]["to_name"]) == (CONTROL, IMAGE_TAG)
    assert "predictions" not in tasks[1] and tasks[1]["data"]["activecrl_audit"]
    xml = (project.path / "batches/labeling-config.xml").read_text()
    assert f'name="{CONTROL}"' in xml and 'value="dog"' in xml and f'name="{IMAGE_TAG}"' in xml
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" + str(tmp_path) in (project.path / "batches/setup.txt").read_text()
    project.issue_batch([], new=True, fmt="labelstudio", url_prefix="s3://b/imgs", out=tmp_path / "t.json")
    parsed = ElementTree.fromstring(labeling_config(['a "b"', "c<d"]))
    assert [c.get("value") for c in parsed.iter("Choice")] == ['a "b"', "c<d"]


@pytest.mark.parametrize("name,a4", [("export.json", "dog"), ("export-min.json", None), ("export.csv", None)])
def test_labelstudio_exports(project, name, a4):
    project.issue_batch([f"a{i}.png" for i in range(7)], new=True)
    result = project.import_labels(FIXTURES / name)
    labels = dict(project.con.execute("SELECT i.path, c.name FROM labels l JOIN images i ON i.id = l.image_id "
                                      "JOIN classes c ON c.id = l.class_id"))
    expected = {"a0.png": "cat", "a2.png": "dog"} | ({"a4.png": a4} if a4 else {})
    assert labels == expected  # a1 skipped (pre-filled result ignored), a5 empty, a6 unannotated
    assert result.conflicts == ["a3.png"] + ([] if a4 else ["a4.png"])
    status = project.status()
    assert set(status.conflicts) == set(result.conflicts) and "2: dog" in status.conflicts["a3.png"]
    assert status.rounds == 1 and status.open_batch is None and status.outstanding == 3  # a1, a5, a6
    annotators = {r[0] for r in project.con.execute("SELECT annotator FROM annotations")}
    assert {"1", "2"} <= annotators and ("ann@example.com" in annotators) == (name == "export.json")
    assert status.seconds_per_label == pytest.approx(5.0 if name == "export.json" else 5.0, abs=1.5)


def test_parse_export_rejects_other_json(tmp_path):
    with pytest.raises(DataError, match="not valid JSON"):
        parse_export(write(tmp_path / "x.json", "{nope"))
    with pytest.raises(DataError, match="a JSON list of tasks"):
        parse_export(write(tmp_path / "x.json", '{"a": 1}'))
    with pytest.raises(DataError, match="whose items have neither"):
        parse_export(write(tmp_path / "x.json", '[{"image": "a.png"}]'))
    task = {"id": 1, "data": {IMAGE_KEY: "a0.png"}, "annotations": [
        {"id": 1, "result": [{"from_name": "choice", "type": "choices", "value": {"choices": ["cat"]}}]}]}
    parsed = parse_export(write(tmp_path / "y.json", json.dumps([task])))
    assert "control must be named 'label'" in parsed.problems[0]


def test_import_is_all_or_nothing(project, tmp_path):
    rows = "image,label\n" + "".join(f"a{i}.png,cat\n" for i in range(3)) + "".join(
        f"ghost{i}.png,cat\n" for i in range(12)) + "a3.png,bird\n"
    with pytest.raises(DataError, match=r"13 row\(s\).*ghost0.png.*\(and 3 more\)"):
        project.import_labels(write(tmp_path / "bad.csv", rows))
    assert project.status().n_labeled == 0 and project.con.execute("SELECT COUNT(*) FROM imports").fetchone()[0] == 0
    with pytest.raises(DataError, match="unknown class 'bird'.*--add-classes"):
        project.import_labels(write(tmp_path / "bird.csv", "image,label\na3.png,bird\n"))
    assert project.import_labels(tmp_path / "bird.csv", add_classes=True).added_classes == ["bird"]
    with pytest.raises(DataError, match="labeled 'bird' before, now 'cat'.*--relabel"):
        project.import_labels(write(tmp_path / "re.csv", "image,label\na3.png,cat\na4.png,dog\n"))
    assert project.status().n_labeled == 1
    res = project.import_labels(tmp_path / "re.csv", relabel=True)
    assert (res.relabeled, res.new_labels) == (1, 1)
    history = project.con.execute("SELECT o.name, n.name FROM label_history h JOIN classes o ON o.id = h.old_class_id "
                                  "JOIN classes n ON n.id = h.new_class_id").fetchall()
    assert history == [("bird", "cat")]
    assert project.import_labels(tmp_path / "re.csv").already_imported
    with pytest.raises(DataError, match="columns image,label"):
        project.import_labels(write(tmp_path / "cols.csv", "file,class\na.png,cat\n"))


def test_status_and_auto_label_export(tmp_path):
    make_images(tmp_path / "img", n=300, nested=False)
    p = Project.init(tmp_path / "proj", images=tmp_path / "img", classes="cat,dog")
    b = p.issue_batch(["0.png"], ["cat"], [0.9], audit=200, seed=0)
    audit = [i.image for i in b.items if i.audit]
    rng = np.random.default_rng(0)
    conf = {f"{i}.png": float(c) for i, c in enumerate(rng.random(300))}
    # the model is right on the audit images above confidence 0.3, wrong below
    truth = {k: ("cat" if conf[k] >= 0.3 else "dog") for k in conf}
    rows = "".join(f"{k},{truth[k]}\n" for k in audit[:20])
    p.import_labels(write(tmp_path / "few.csv", "image,label\n0.png,cat\n" + rows))
    p.record_predictions(list(conf), ["cat"] * 300, list(conf.values()), "m1")
    # ln(0.05 / 7) / ln(0.95) = 96.3, and ceil(log2(97 + 1)) = 7 steps
    with pytest.raises(ConfigError, match=r"needs at least 97 audit labels .*delta/7 .* got 20 instead"):
        p.export(tmp_path / "out.csv", auto_label=True, risk=0.05, delta=0.05)
    # status previews the export at R = 5 % and 10 % (D = 10 %): here, how many audit labels it lacks
    assert [(a.risk, a.n_audit, a.needed, a.n_auto) for a in p.status().auto_label] == [(0.05, 20, 83, 0),
                                                                                      (0.10, 20, 39, 0)]
    p.import_labels(write(tmp_path / "all.csv", "image,label\n" + "".join(f"{k},{truth[k]}\n" for k in audit)))
    s = p.status()
    hits = sum(truth[k] == "cat" for k in audit)
    assert s.n_audit_labels == 200 and s.audit_accuracy == hits / 200 and s.model_version == "m1"
    assert s.audit_interval[0] < s.audit_accuracy < s.audit_interval[1]
    res = p.export(tmp_path / "out.csv", auto_label=True, risk=0.05, delta=0.05)
    assert res.sgr.bound <= 0.05 and res.sgr.threshold >= 0.28 and res.n_human == 201
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "image,label,source,confidence"
    auto = [line.split(",") for line in lines[1:] if ",auto," in line]
    assert len(auto) == res.n_auto > 0 and all(float(c) >= res.sgr.threshold for *_, c in auto)
    assert len(lines) - 1 == res.n_human + res.n_auto
    for preview in p.status().auto_label:  # what the export would write, without writing it
        res = p.export(tmp_path / "out.csv", auto_label=True, risk=preview.risk, delta=preview.delta)
        assert (preview.n_auto, preview.bound, preview.n_unlabeled) == (res.n_auto, res.sgr.bound, res.n_unlabeled)
        assert preview.n_auto > 0


def test_changed_missing_and_added_images(project, tmp_path):
    img = tmp_path / "img"
    Image.new("RGB", (3, 3)).save(img / "a1.png")
    (img / "a2.png").unlink()
    Image.new("RGB", (4, 4)).save(img / "new.png")
    check = project.check_images()
    assert (check.changed, check.missing, check.new, check.ok) == (["a1.png"], ["a2.png"], ["new.png"], False)
    assert project.add() == ["new.png"] and project.add() == []
    with pytest.raises(DataError, match="inside it"):
        project.add(tmp_path)


def test_second_writer_waits_then_fails_clearly(project, monkeypatch):
    from activecrl.label import db

    other = sqlite3.connect(str(project.path / "project.db"), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.2)
    project.con.execute("PRAGMA busy_timeout = 200")
    with pytest.raises(db.ProjectBusy, match="another process"):
        project.import_labels(Path(shutil.copy(FIXTURES / "export.json", project.path / "e.json")))
    other.execute("ROLLBACK")
    assert project.import_labels(project.path / "e.json").new_labels == 3


@pytest.mark.parametrize("name", ["export.json", "export_min.json", "export.csv", "export_snapshot.json",
                                  "export_snapshot_min.json", "export_snapshot.csv"])
def test_real_label_studio_123_exports(tmp_path, name):
    real = FIXTURES / "ls-1.23"
    make_images(tmp_path / "images", n=9, nested=False, prefix="img_0")
    (tmp_path / "images" / "sub dir").mkdir()
    (tmp_path / "images" / "img_07.png").rename(tmp_path / "images" / "sub dir" / "img 07.png")
    p = Project.init(tmp_path / "proj", images=tmp_path / "images", classes="cat,dog,sea lion")
    keys = [t["data"][IMAGE_KEY] for t in json.loads((real / "tasks.json").read_text())]
    p.issue_batch(keys, fmt="labelstudio", document_root=tmp_path)
    ours = json.loads((p.path / "batches/round-1.json").read_text())
    assert [t["data"]["image"] for t in ours] == [t["data"]["image"] for t in json.loads((real / "tasks.json").read_text())]
    result = p.import_labels(real / name)
    labels = dict(p.con.execute("SELECT i.path, c.name FROM labels l JOIN images i ON i.id = l.image_id "
                                "JOIN classes c ON c.id = l.class_id"))
    assert labels == {"img_00.png": "dog", "img_01.png": "dog", "img_03.png": "cat", "img_05.png": "sea lion",
                      "sub dir/img 07.png": "cat", "img_08.png": "dog"}
    assert result.conflicts == ["img_04.png"]
    s = p.status()
    assert s.outstanding == 2 and s.rounds == 1  # img_02 (skipped), img_06 (not annotated)
    lead = [4.25, 1.5, 5.5, 3.0, 7.75, 6.0, 2.5, 3.25, 8.0]  # answered annotations
    assert s.seconds_per_label == pytest.approx(np.median(lead))
    assert {r[0] for r in p.con.execute("SELECT annotator FROM annotations")} == {"1", "2", "3"}

"""A real Label Studio round trip: tasks with predictions in, annotations of every kind, exports out.

Installs ``label-studio`` (1.23.x) into its own virtual environment if it is missing there, starts it
on 127.0.0.1 with local file serving under a temporary document root, a temporary data folder, no
telemetry, an admin user and a legacy API token, then through the REST API:

1. creates two annotators, a project with an image classification config (one Choices control),
   and a Local Files storage on the images folder (a subfolder of the document root);
2. imports generated images as tasks (``data.image`` = ``/data/local-files/?d=<relative path>``,
   ``data.activecrl_image`` = our key, most with a ``predictions`` entry), checks that each task
   shows its prediction and that each image is served;
3. annotates them (see ``SCENARIOS``: a correction, an accepted prediction, skips that still hold
   the pre-filled choice or nothing, agreeing and disagreeing annotators, a ground truth, a task
   left alone, several choices, a path with spaces), each with a ``lead_time``;
4. exports JSON, JSON_MIN and CSV through ``/api/projects/{id}/export`` (all tasks) and through the
   export snapshot API (also JSON with annotators and predictions in full), checks each against
   the scenarios, and writes them to ``--out``;
5. runs rounds of activecrl labeling through it (``activecrl_round_trip``): ``activecrl label init`` on
   noisy generated photos, ``activecrl label next --format labelstudio`` (a cold start, then a model
   round with suggestions and audit images), a Label Studio project from the written labeling
   config, the tasks imported (their suggestions shown, their images served), labeled there,
   exported as JSON and read back with ``activecrl label import``; the project's status and
   ``activecrl label export`` must hold exactly those labels.

The server is stopped at the end, also on error. Every request goes to 127.0.0.1, with a time limit
each and a bounded count. Not part of the test suite (installing Label Studio takes minutes).

    PYTHONPATH=. python bench/labelstudio_roundtrip.py --out /tmp/ls-roundtrip
    PYTHONPATH=. python bench/labelstudio_roundtrip.py --ls-venv VENV --out DIR --keep-workdir
    # flags: --ls-venv --ls-spec --out --port --startup-timeout --keep-workdir --skip-activecrl
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

LS_SPEC = "label-studio>=1.23,<1.24"
HOST = "127.0.0.1"
CLASSES = ["cat", "dog", "sea lion"]  # a name with a space: how CSV and JSON-MIN flatten it
CONTROL, IMAGE_TAG, IMAGE_KEY = "label", "image", "activecrl_image"
MODEL_VERSION = "activecrl-roundtrip"
MAX_REQUESTS = 200  # bound on the REST calls of one run
REQUEST_TIMEOUT = 60.0
ADMIN = "lead@example.com"
ANNOTATORS = {"alice": "alice@example.com", "bob": "bob@example.com"}


@dataclass(frozen=True)
class Scenario:
    """One task: its image, the model's suggestion (or None) and the annotations made on it.

    ``annotations``: (annotator or "admin", what it chose, was_cancelled, ground_truth, lead_time);
    what it chose: a class, "prediction" (the suggestion as is), None (an empty result) or a tuple
    of classes (several choices: the API accepts them although the config says ``choice="single"``).
    """

    image: str
    suggestion: str | None
    score: float | None
    annotations: tuple = ()
    note: str = ""


SCENARIOS = [
    Scenario("images/img_00.png", "cat", 0.91, (("admin", "dog", False, False, 4.25),),
             "correction: the annotator picks another class than the prediction"),
    Scenario("images/img_01.png", "dog", 0.88, (("admin", "prediction", False, False, 1.5),),
             "accepts the prediction (result copied from it, parent_prediction set as the UI does)"),
    Scenario("images/img_02.png", "sea lion", 0.55, (("admin", "prediction", True, False, 2.0),),
             "skipped (was_cancelled) while the pre-filled choice is still in its result"),
    Scenario("images/img_03.png", "cat", 0.73, (("alice", "cat", False, False, 3.0), ("bob", "cat", False, False, 5.5)),
             "two annotators agree"),
    Scenario("images/img_04.png", "dog", 0.42, (("alice", "dog", False, False, 6.0),
                                                ("bob", "sea lion", False, False, 7.75)),
             "two annotators disagree"),
    Scenario("images/img_05.png", "sea lion", 0.97, (("admin", "sea lion", False, True, 2.5),),
             "ground truth annotation"),
    Scenario("images/img_06.png", "cat", 0.33, (), "no annotation"),
    Scenario("images/sub dir/img 07.png", "dog", 0.61, (("alice", "prediction", True, False, 1.0),
                                                        ("bob", "cat", False, False, 3.25)),
             "a path with spaces; skipped by alice, labeled by bob"),
    Scenario("images/img_08.png", None, None, (("admin", "dog", False, False, 8.0),),
             "no prediction; labeled"),
    Scenario("images/img_09.png", None, None, (("alice", None, True, False, 0.5),),
             "no prediction; skipped with an empty result"),
    Scenario("images/img_10.png", "cat", 0.5, (("bob", ("cat", "dog"), False, False, 2.25),),
             "two classes in one result (made through the API; the UI's single choice prevents it)"),
]


# --- Label Studio installation and server -------------------------------------------------------------


def ensure_label_studio(venv: Path, spec: str) -> Path:
    """The ``label-studio`` executable of ``venv``, installing ``spec`` there first if it is missing."""
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    print(f"installing {spec} into {venv} (several minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", spec], check=True)
    return exe


def installed_version(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('label-studio'))"],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(document_root: Path, data_dir: Path, token: str, password: str) -> dict:
    """The environment of the server: local files under ``document_root``, data in ``data_dir``, no
    telemetry, the admin user and its legacy token created at start."""
    env = dict(os.environ)
    env.update({
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        # set before Django's settings load; --data-dir alone still creates the default folder in $HOME
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_USERNAME": ADMIN, "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        # 1.23 turns on personal access tokens (JWT, Bearer) for new organizations and legacy tokens off
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    })
    return env


_STARTED = re.compile(r"Starting development server at http://[^:]+:(\d+)/")


@contextlib.contextmanager
def label_studio_server(exe: Path, workdir: Path, env: dict, port: int, timeout: float):
    """Runs ``label-studio start`` and yields the base URL once the API answers; stops it on exit.

    Label Studio moves to the next port silently when the asked one is taken: the port is read from
    the server's own "Starting development server at" line.
    """
    log_path = workdir / "server.log"
    command = [str(exe), "start", "--no-browser", "--internal-host", HOST, "--port", str(port),
               "--data-dir", env["LABEL_STUDIO_BASE_DATA_DIR"]]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                   start_new_session=True)
    try:
        url = _wait_until_up(process, log_path, timeout)
        yield url
    finally:
        _stop(process)


def _wait_until_up(process: subprocess.Popen, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"label-studio exited with {process.returncode}; see {log_path}:\n"
                               + log_path.read_text()[-3000:])
        if url is None:
            found = _STARTED.search(log_path.read_text())
            url = f"http://{HOST}:{found.group(1)}" if found else None
        if url is not None:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/api/version", timeout=5) as r:
                    if r.status == 200:
                        return url
        time.sleep(1.0)
    raise TimeoutError(f"label-studio did not answer within {timeout:.0f} s; see {log_path}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the server's own process group (it was started in a new session)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


# --- REST client ---------------------------------------------------------------------------------------


@dataclass
class Client:
    """A few REST calls to one Label Studio on 127.0.0.1 with a legacy token; bounded in count and time."""

    url: str
    token: str
    sent: int = 0

    def __post_init__(self):
        if urllib.parse.urlsplit(self.url).hostname != HOST:
            raise ValueError(f"the Label Studio URL must be on {HOST}, got {self.url!r} instead")

    def call(self, method: str, path: str, body=None, *, raw: bool = False, query: dict | None = None):
        if self.sent >= MAX_REQUESTS:
            raise RuntimeError(f"more than {MAX_REQUESTS} requests to Label Studio: stopping")
        self.sent += 1
        target = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(target, data=data, method=method, headers={
            "Authorization": f"Token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as r:
                payload = r.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {path} -> {exc.code}: {exc.read()[:2000].decode(errors='replace')}") from exc
        return payload if raw else (json.loads(payload) if payload else None)


# --- the round trip ------------------------------------------------------------------------------------


def labeling_config(classes: list[str]) -> str:
    """One image, one single-choice control over the classes (the names activecrl's tasks use)."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{IMAGE_TAG}" value="$image"/>\n'
            f'  <Choices name="{CONTROL}" toName="{IMAGE_TAG}" choice="single" showInLine="true" required="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def make_images(document_root: Path, scenarios: list[Scenario]) -> None:
    """Small PNGs, one flat colour each (Pillow)."""
    from PIL import Image
    for i, s in enumerate(scenarios):
        path = document_root / s.image
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), ((40 * i) % 256, (90 + 25 * i) % 256, (200 - 20 * i) % 256)).save(path)


def choice_result(label) -> list[dict]:
    """The result of one Choices control: a class, a tuple of classes, or None for an empty result."""
    if label is None:
        return []
    labels = list(label) if isinstance(label, tuple) else [label]
    return [{"from_name": CONTROL, "to_name": IMAGE_TAG, "type": "choices", "value": {"choices": labels}}]


def make_tasks(scenarios: list[Scenario], images_rel: str) -> list[dict]:
    """Tasks as activecrl writes them: the image URL for Label Studio plus our own key."""
    tasks = []
    for s in scenarios:
        key = os.path.relpath(s.image, images_rel)  # our key: relative to the images folder
        task = {"data": {IMAGE_TAG: "/data/local-files/?d=" + urllib.parse.quote(s.image), IMAGE_KEY: key}}
        if s.suggestion is not None:
            task["predictions"] = [{"model_version": MODEL_VERSION, "score": s.score,
                                    "result": choice_result(s.suggestion)}]
        tasks.append(task)
    return tasks


def check_served(client: Client, tasks: list[dict]) -> None:
    """Label Studio serves every task's image at its ``data.image`` URL, as the editor loads it."""
    for task in tasks:
        if not client.call("GET", task["data"][IMAGE_TAG], raw=True).startswith(b"\x89PNG"):
            raise AssertionError(f"Label Studio did not serve {task['data'][IMAGE_TAG]} as a PNG")


def create_users(client: Client) -> dict[str, int]:
    ids = {"admin": client.call("GET", "/api/current-user/whoami")["id"]}
    for name, email in ANNOTATORS.items():
        ids[name] = client.call("POST", "/api/users/", {"email": email, "username": name,
                                                        "first_name": name.title()})["id"]
    return ids


def create_project(client: Client, config: str, images_dir: Path) -> int:
    project = client.call("POST", "/api/projects/", {"title": "activecrl round trip", "label_config": config,
                                                     "model_version": MODEL_VERSION})
    client.call("POST", "/api/storages/localfiles/", {
        "project": project["id"], "title": "activecrl images", "path": str(images_dir),
        "use_blob_urls": False})  # not synced: the imported tasks already point at the images
    return project["id"]


def import_tasks(client: Client, project: int, tasks: list[dict]) -> list[dict]:
    """Imports ``tasks``; returns Label Studio's tasks in import order, each checked for its prediction."""
    answer = client.call("POST", f"/api/projects/{project}/import", tasks)
    if answer.get("task_count") != len(tasks) or answer.get("prediction_count") != sum("predictions" in t
                                                                                      for t in tasks):
        raise AssertionError(f"import answered {answer}")
    listed = client.call("GET", "/api/tasks/", query={"project": project, "page_size": 100})
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    by_key = {t["data"][IMAGE_KEY]: t["id"] for t in listed}
    out = []
    for task in tasks:
        full = client.call("GET", f"/api/tasks/{by_key[task['data'][IMAGE_KEY]]}")
        want = task.get("predictions", [])
        got = full.get("predictions", [])
        if [p["result"][0]["value"] for p in want] != [p["result"][0]["value"] for p in got]:
            raise AssertionError(f"task {full['id']} shows predictions {got}, expected {want}")
        out.append(full)
    return out


def annotate(client: Client, ls_tasks: list[dict], scenarios: list[Scenario], users: dict[str, int]) -> None:
    for task, s in zip(ls_tasks, scenarios):
        for who, label, cancelled, ground_truth, lead_time in s.annotations:
            body = {"completed_by": users[who], "was_cancelled": cancelled, "ground_truth": ground_truth,
                    "lead_time": lead_time}
            if label == "prediction":  # as the UI does when the annotator submits the pre-filled prediction
                prediction = task["predictions"][0]
                body.update(result=prediction["result"], parent_prediction=prediction["id"])
            else:
                body["result"] = choice_result(label)
            client.call("POST", f"/api/tasks/{task['id']}/annotations/", body)


def export_direct(client: Client, project: int, export_type: str) -> bytes:
    """``GET /api/projects/{id}/export``: every task (``download_all_tasks``), also the unannotated."""
    return client.call("GET", f"/api/projects/{project}/export", raw=True,
                       query={"exportType": export_type, "download_all_tasks": "true",
                              "download_resources": "false"})


def export_snapshot(client: Client, project: int, export_type: str, expand: bool = False,
                    timeout: float = 60.0) -> bytes:
    """The snapshot API: create an export, wait until it is completed, download it.

    ``expand``: annotators as user objects and predictions in full, instead of ids.
    """
    body = {"title": "activecrl"}
    if expand:
        body["serialization_options"] = {"annotations__completed_by": {"only_id": False},
                                         "predictions": {"only_id": False}}
    snapshot = client.call("POST", f"/api/projects/{project}/exports/", body)
    deadline = time.monotonic() + timeout
    while snapshot.get("status") != "completed":
        if snapshot.get("status") == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"export snapshot {snapshot.get('id')} ended as {snapshot.get('status')}")
        time.sleep(1.0)
        snapshot = client.call("GET", f"/api/projects/{project}/exports/{snapshot['id']}")
    return client.call("GET", f"/api/projects/{project}/exports/{snapshot['id']}/download", raw=True,
                       query={"exportType": export_type})


def check_json_export(tasks: list[dict], scenarios: list[Scenario], users: dict[str, int]) -> None:
    """Each scenario's annotations are in the JSON export, with their markers and lead times."""
    by_key = {t["data"][IMAGE_KEY]: t for t in tasks}
    for s in scenarios:
        task = by_key[os.path.relpath(s.image, "images")]
        got = sorted((_user_id(a["completed_by"]), json.dumps(a["result"]), a["was_cancelled"], a["ground_truth"],
                      a["lead_time"]) for a in task["annotations"])
        want = sorted((users[who], json.dumps(choice_result(s.suggestion if label == "prediction" else label)), c, g,
                       lt) for who, label, c, g, lt in s.annotations)
        if got != want:
            raise AssertionError(f"{s.image}: export holds {got}, expected {want}")


def _user_id(value) -> int:
    return value["id"] if isinstance(value, dict) else value


def expected_flat_rows(scenarios: list[Scenario], users: dict[str, int]) -> list[tuple]:
    """(key, annotator id, label) of each JSON-MIN / CSV row: one per annotation that is not cancelled,
    one without annotator and label per task never annotated, none for a task whose annotations are all
    cancelled. The label is the class, ``{"choices": [...]}`` for several, None for an empty result."""
    rows = []
    for s in scenarios:
        key = os.path.relpath(s.image, "images")
        if not s.annotations:
            rows.append((key, None, None))
        for who, label, cancelled, _, _ in s.annotations:
            chosen = s.suggestion if label == "prediction" else label
            if not cancelled:
                rows.append((key, users[who], {"choices": list(chosen)} if isinstance(chosen, tuple) else chosen))
    return rows


def check_flat_export(rows: list[dict], scenarios: list[Scenario], users: dict[str, int], name: str) -> None:
    """JSON-MIN rows, or CSV rows (all text: ids as digits, several choices as a JSON string)."""
    def label(value):
        return json.loads(value) if isinstance(value, str) and value.startswith("{") else (value or None)

    got = [(r[IMAGE_KEY], int(r["annotator"]) if r["annotator"] not in (None, "") else None, label(r.get(CONTROL)))
           for r in rows]
    if sorted(map(json.dumps, got)) != sorted(map(json.dumps, expected_flat_rows(scenarios, users))):
        raise AssertionError(f"{name} holds rows {got}, expected {expected_flat_rows(scenarios, users)}")


def run_round_trip(client: Client, workdir: Path, out: Path) -> tuple[int, dict, dict]:
    """Steps 1-4 against a running server; writes tasks, config and exports into ``out``."""
    document_root = workdir / "root"
    images_dir = document_root / "images"
    make_images(document_root, SCENARIOS)
    config = labeling_config(CLASSES)
    tasks = make_tasks(SCENARIOS, "images")
    files = {"config.xml": config, "tasks.json": json.dumps(tasks, indent=2) + "\n"}
    users = create_users(client)
    project = create_project(client, config, images_dir)
    ls_tasks = import_tasks(client, project, tasks)
    check_served(client, tasks)
    annotate(client, ls_tasks, SCENARIOS, users)
    exports = {"export.json": export_direct(client, project, "JSON"),
               "export_min.json": export_direct(client, project, "JSON_MIN"),
               "export.csv": export_direct(client, project, "CSV"),
               "export_snapshot.json": export_snapshot(client, project, "JSON"),
               "export_snapshot_min.json": export_snapshot(client, project, "JSON_MIN"),
               "export_snapshot.csv": export_snapshot(client, project, "CSV"),
               "export_snapshot_expanded.json": export_snapshot(client, project, "JSON", expand=True)}
    for name in ("export.json", "export_snapshot.json", "export_snapshot_expanded.json"):
        check_json_export(json.loads(exports[name]), SCENARIOS, users)
    for name in ("export_min.json", "export_snapshot_min.json"):
        check_flat_export(json.loads(exports[name]), SCENARIOS, users, name)
    for name in ("export.csv", "export_snapshot.csv"):
        check_flat_export(list(csv.DictReader(io.StringIO(exports[name].decode(), newline=""))), SCENARIOS, users, name)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in {**files, **exports}.items():
        path = out / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        written[name] = path
    return project, users, written


def summarize_exports(files: dict) -> str:
    """What each export holds per task: a few lines for the console."""
    lines = []
    tasks = json.loads(files["export.json"].read_text())
    lines.append(f"JSON: {len(tasks)} tasks, {sum(len(t['annotations']) for t in tasks)} annotations")
    rows = json.loads(files["export_min.json"].read_text())
    lines.append(f"JSON_MIN: {len(rows)} rows, keys {sorted(set().union(*(r.keys() for r in rows)))}")
    with open(files["export.csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    lines.append(f"CSV: {len(csv_rows)} rows, columns {list(csv_rows[0]) if csv_rows else []}")
    return "\n".join(lines)


# --- activecrl side ------------------------------------------------------------------------------------

ACTIVECRL_COLORS = {"cat": 0, "dog": 1, "sea lion": 2}  # the channel each class's noisy images light up
ROUNDS = ((6, 0), (4, 2))  # (budget, audit) of each activecrl round


def activecrl(*args) -> str:
    """One ``activecrl`` command (the package of this interpreter); its output, or an error with it."""
    done = subprocess.run([sys.executable, "-m", "activecrl", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "160"})
    if done.returncode != 0:
        raise RuntimeError(f"activecrl {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def make_photos(folder: Path, n: int = 18) -> dict[str, str]:
    """Noisy 24x24 images whose class shows in one colour channel; returns each image's class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n):
        name = CLASSES[i % len(CLASSES)]
        pixels = rng.integers(0, 90, (24, 24, 3))
        pixels[:, :, ACTIVECRL_COLORS[name]] += 150
        key = f"photo {i:02d}.png" if i % 5 else f"sub/photo_{i:02d}.png"  # spaces and a subfolder
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / key)
        truth[key] = name
    return truth


def annotate_truth(client: Client, ls_tasks: list[dict], truth: dict[str, str]) -> None:
    """The admin labels every task with its image's class, as a labeler would."""
    for task in ls_tasks:
        client.call("POST", f"/api/tasks/{task['id']}/annotations/", {
            "result": choice_result(truth[task["data"][IMAGE_KEY]]), "lead_time": 2.0})


def activecrl_round_trip(client: Client, workdir: Path, out: Path) -> str:
    """Step 5: rounds of ``activecrl label next --format labelstudio`` imported into Label Studio,
    labeled there, exported as JSON and read back with ``activecrl label import``; returns the
    project's final status line."""
    document_root = workdir / "root"
    photos = document_root / "photos"
    truth = make_photos(photos)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    project = workdir / "activecrl-project"
    activecrl("label", "init", project, "--images", photos, "--classes-file", out / "classes.txt")
    for r, (budget, audit) in enumerate(ROUNDS, 1):
        tasks_file = out / f"activecrl_round{r}.json"
        shown = activecrl("label", "next", project, "--budget", budget, "--audit", audit, "--format", "labelstudio",
                          "--document-root", document_root, "-o", tasks_file)
        print(shown.splitlines()[0])
        tasks = json.loads(tasks_file.read_text())
        config = (out / "labeling-config.xml").read_text()
        ls_project = create_project(client, config, photos)
        ls_tasks = import_tasks(client, ls_project, tasks)  # checks that activecrl's suggestions show
        check_served(client, tasks)
        annotate_truth(client, ls_tasks, truth)
        export = out / f"activecrl_export_round{r}.json"
        export.write_bytes(export_direct(client, ls_project, "JSON"))
        print("activecrl label import:", " ".join(activecrl("label", "import", project, export).split()))
    status = json.loads(activecrl("label", "status", project, "--json"))
    expected = sum(budget + audit for budget, audit in ROUNDS)
    if status["n_labeled"] != expected or status["n_audit_labels"] != ROUNDS[-1][1]:
        raise AssertionError(f"the activecrl project holds {status['n_labeled']} labels ({status['n_audit_labels']} "
                             f"audit), expected {expected} ({ROUNDS[-1][1]} audit)")
    exported = out / "activecrl_labels.csv"
    activecrl("label", "export", project, "-o", exported)
    with open(exported, newline="") as f:
        wrong = [row for row in csv.DictReader(f) if truth[row["image"]] != row["label"]]
    if wrong:
        raise AssertionError(f"activecrl exported labels that differ from Label Studio's: {wrong}")
    return f"activecrl project: {status['n_labeled']} labels over {len(ROUNDS)} rounds, all as labeled in Label Studio"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ls-venv", type=Path, default=Path.home() / ".cache" / "activecrl" / "label-studio-venv",
                   help="virtual environment of Label Studio (installed there if missing)")
    p.add_argument("--ls-spec", default=LS_SPEC, help="what pip installs when --ls-venv has no label-studio")
    p.add_argument("--out", type=Path, required=True, help="folder for tasks, config and the raw exports")
    p.add_argument("--port", type=int, default=None, help="port to ask for (default: a free one)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temporary data folder and server log")
    p.add_argument("--skip-activecrl", action="store_true", help="stop after the export")
    args = p.parse_args()

    exe = ensure_label_studio(args.ls_venv, args.ls_spec)
    version = installed_version(args.ls_venv)
    workdir = Path(tempfile.mkdtemp(prefix="ls-roundtrip-"))
    token, password = secrets.token_hex(20), secrets.token_urlsafe(16)
    env = server_env(workdir / "root", workdir / "data", token, password)
    (workdir / "root").mkdir()
    start = time.perf_counter()
    try:
        with label_studio_server(exe, workdir, env, args.port or free_port(), args.startup_timeout) as url:
            up = time.perf_counter() - start
            client = Client(url, token)
            project, users, files = run_round_trip(client, workdir, args.out)
            print(f"label-studio {version} at {url} (up in {up:.0f} s), project {project}, users {users}, "
                  f"{client.sent} requests; every export holds what the scenarios expect")
            print(summarize_exports(files))
            print(f"files in {args.out}: {', '.join(sorted(files))}")
            if not args.skip_activecrl:
                print(activecrl_round_trip(client, workdir, args.out))
                print(f"{client.sent} requests in all")
    finally:
        if args.keep_workdir:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

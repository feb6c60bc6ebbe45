"""The README's code must run as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from activecrl.inference.outputs import PoolOutputs
from activecrl.strategies import STRATEGIES, QueryContext, get_strategy

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(marker: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if marker in block:
            return block
    raise AssertionError(f"no python block containing {marker!r} in README.md")


def test_readme_strategy_example_runs(tmp_path, monkeypatch):
    (tmp_path / "my_strategies.py").write_text(_block("# my_strategies.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        strategy = get_strategy("my_strategies:LowMarginFarFeatures")
        assert "low_margin_features" in STRATEGIES
        probs = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [0.45, 0.4, 0.15], [0.98, 0.01, 0.01]])
        g = torch.Generator().manual_seed(0)
        pool = PoolOutputs.from_probs(probs, indices=[10, 11, 12, 13], features=torch.randn(4, 5, generator=g))
        labeled = PoolOutputs.from_probs(np.full((2, 3), 1 / 3), indices=[0, 1], features=torch.randn(2, 5, generator=g))
        picked = strategy.query(QueryContext(pool=pool, labeled=labeled), 2, np.random.default_rng(0))
        assert sorted(picked.tolist()) == [10, 12]  # the two smallest margins
    finally:
        STRATEGIES.unregister("low_margin_features")


def test_readme_notebook_example_runs(tmp_path, monkeypatch):
    code = _block("from activecrl.data import load_dataset")
    code = code.replace("TrainConfig(epochs=20", "TrainConfig(epochs=1")
    code = code.replace('ALConfig(strategy="entropy", trainer="baseline")',
                        'ALConfig(strategy="entropy", trainer="baseline", stages=2, trials=1, device="cpu", '
                        'train=TrainConfig(epochs=1))')
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert len(namespace["records"]) == 2


def test_readme_recipe_example_runs():
    from activecrl.training.trainers import TRAINERS

    namespace = {}
    try:
        exec(compile(_block('register_recipe("crl_sam_ema"'), "README.md", "exec"), namespace)
        config = namespace["trainer"].config
        assert (config.optimizer, config.sam_rho, config.averaging, config.schedule) == ("sam", 0.1, "ema", "cosine")
        assert namespace["trainer"].name == "crl_sam_ema" and hasattr(namespace["trainer"], "setup")
    finally:
        TRAINERS.unregister("crl_sam_ema")


def _console_script() -> list[str]:
    """The installed ``activecrl`` command, or its exact equivalent: ``-P`` keeps the working folder
    off ``sys.path`` as a console script does (``python -m`` would add it and hide the bug)."""
    script = Path(sys.executable).with_name("activecrl")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-P", "-c", "import sys; from activecrl.cli.app import main; sys.argv[0] = 'activecrl'; main()"]


def test_readme_strategy_command_works_through_the_console_script(tmp_path):
    """The README's own command, run as a user runs it: the console script, in the folder where the
    user wrote my_strategies.py (the demo shortened to 2 stages of 1 epoch)."""
    (tmp_path / "my_strategies.py").write_text(_block("# my_strategies.py"))
    command = next(line.split("#")[0].split() for line in README.read_text().splitlines()
                   if line.startswith("activecrl run --strategy my_strategies:"))
    assert command[0] == "activecrl"
    env = {**os.environ, "PYTHONPATH": str(README.parent)}  # this checkout, not another install
    result = subprocess.run(_console_script() + command[1:] + ["--trials", "1", "--stages", "2", "--epochs", "1",
                                                               "--device", "cpu", "--out", "run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] == "my_strategies:LowMarginFarFeatures"
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 2


def test_readme_arrays_example_runs():
    namespace = {}
    exec(compile(_block("from activecrl.strategies import query"), "README.md", "exec"), namespace)
    labeled = set(namespace["labeled"].tolist())
    for name in ("picks", "far", "typical", "covered"):
        picks = namespace[name]
        assert len(set(picks.tolist())) == 100 and not labeled & set(picks.tolist())


def test_readme_sweep_toml_is_the_shipped_file():
    import tomllib

    shipped = (README.parent / "configs" / "sweeps" / "digits.toml").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S) if "[grid]" in b)
    assert tomllib.loads(block) == tomllib.loads(shipped)


def test_readme_names_every_preset():
    from activecrl.core.config import preset_names

    text = README.read_text()
    assert [name for name in preset_names() if f"`{name}`" not in text] == []


def test_readme_speaks_of_the_tool_only():
    text = README.read_text()
    for phrase in ("issue #", "issue-", "issues #", "../shared", "/work/", "design card", "load average"):
        assert phrase not in text, phrase


def _label_block() -> list[list[str]]:
    """The commands of the README's labeling loop (its first bash block under "Label your own images")."""
    section = README.read_text().split("### Label your own images", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [line.split("#")[0].split() for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_labeling_loop_runs_as_written(tmp_path):
    """Every command of the README's labeling loop, through the console script, in a folder holding
    ``photos/``; the labeler fills in the batch between ``next`` and ``import``."""
    from PIL import Image

    classes = ("cat", "dog", "bird")
    rng = np.random.default_rng(0)
    truth = {}

    def make_images(folder, n):
        (tmp_path / folder).mkdir()
        for i in range(n):
            pixels = rng.integers(0, 80, (16, 16, 3))
            pixels[:, :, i % 3] += 170  # a class per colour channel
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / folder / f"{i:03d}.png")
            truth[str(Path(folder, f"{i:03d}.png").relative_to("photos"))] = classes[i % 3]

    make_images("photos", 200)
    commands = _label_block()
    assert [c[:3] for c in commands] == [["activecrl", "label", verb] for verb in
                                         ("init", "next", "import", "next", "status", "export", "export", "add")]
    outputs = []
    for command in commands:
        if command[2] == "add":  # images copied into the folder later
            make_images("photos/new", 3)
        if command[2] == "import":  # the labeler: the batch's images with their labels, as the README says
            batch = (tmp_path / "proj" / "batches" / "round-1.csv").read_text().splitlines()[1:]
            (tmp_path / command[-1]).write_text(
                "image,label\n" + "".join(f"{row.split(',')[0]},{truth[row.split(',')[0]]}\n" for row in batch))
        result = subprocess.run(_console_script() + command[1:], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600, env={**os.environ, "COLUMNS": "200"})
        outputs.append(result)
        if "--auto-label" in command:  # 20 audit labels cannot certify 5 % at delta 5 %: it says how many
            assert result.returncode == 2 and "needs at least 97 audit labels" in " ".join(result.stdout.split()), \
                result.stdout + result.stderr
        else:
            assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert rows[0] == "image,label,source,confidence" and len(rows) == 1 + 50 + 20  # the labeled batch, its audit
    assert "added 3 images" in outputs[-1].stdout

"""A lean repository: no weights or arrays in git, and one script that regenerates every result."""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_config import COMMANDS, captured  # noqa: F401  (captured is a fixture)

ROOT = Path(__file__).resolve().parent.parent
BINARY = ("*.pt", "*.npz", "*.npy")


def _git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_no_weights_or_arrays_in_git():
    assert _git("ls-files", *BINARY).split() == []
    for pattern in BINARY:  # and .gitignore keeps new ones out
        assert _git("check-ignore", "--no-index", f"results/x/{pattern.replace('*', 'model')}").strip()


def _regenerate_commands():
    env = {**os.environ, "DRY": "1"}
    proc = subprocess.run(["bash", str(ROOT / "results" / "regenerate.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.startswith("activecrl ")]


def test_regenerate_covers_every_committed_result(captured):  # noqa: F811
    commands = _regenerate_commands()
    outs = set()
    for args in commands:
        if "--out" in args:
            outs.add(args[args.index("--out") + 1])
        for flag in ("-o", ">"):  # reports, plots, and the summary table written to a file
            if flag in args:
                outs.add(args[args.index(flag) + 1])
        if args[1] in COMMANDS:
            captured(args[1:])  # parses and builds its config with today's CLI
    results = ROOT / "results"
    markers = ("metrics.json", "ood.json", "results.jsonl")
    expected = {str(p.parent.relative_to(ROOT)) for m in markers for p in results.glob(f"*/*/{m}")}
    expected |= {str(p.relative_to(ROOT)) for p in results.glob("*/*") if p.is_file()
                 and p.name in ("report.md", "curves.png", "summary.txt")}
    assert len(expected) > 30 and expected <= outs, sorted(expected - outs)

"""Labeling project speed: ``Project.init`` hashing a folder of small PNGs, and importing labels.

Generates ``--n`` small PNGs (8x8, distinct) in a temp dir, then times:
- the reference: a plain ``hashlib.blake2b`` loop reading every file (what hashing alone costs);
- ``Project.init`` (find, hash in a thread pool, PNG header size, one SQLite transaction);
- ``import_labels`` of a ``--labels``-row CSV (one transaction).
Prints images/s, the import time and peak RSS (VmHWM).

    PYTHONPATH=. python bench/bench_label.py --n 100000 --labels 10000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from activecrl.label import Project
from bench._memory import reset_peak_rss, status_mb


def make_folder(root: Path, n: int) -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    template = buf.getvalue()
    for i in range(n):
        sub = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        # distinct files without encoding 100k PNGs: the bytes after IEND are ignored by decoders
        (sub / f"{i:06d}.png").write_bytes(template + i.to_bytes(4, "little"))


def reference(root: Path) -> float:
    t = time.perf_counter()
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                hashlib.blake2b(f.read(), digest_size=16).hexdigest()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=10_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "img", args.n)
        t_ref = reference(tmp / "img")
        reset_peak_rss()
        t = time.perf_counter()
        p = Project.init(tmp / "proj", images=tmp / "img", classes="a,b,c")
        t_init = time.perf_counter() - t
        paths = [r[0] for r in p.con.execute("SELECT path FROM images LIMIT ?", (args.labels,))]
        csv = tmp / "labels.csv"
        csv.write_text("image,label\n" + "".join(f"{x},{'abc'[i % 3]}\n" for i, x in enumerate(paths)))
        t = time.perf_counter()
        res = p.import_labels(csv)
        t_import = time.perf_counter() - t
        assert res.new_labels == len(paths)
        print(f"images: {args.n:,}  (cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.1f})")
        print(f"reference hashlib loop: {t_ref:.2f} s = {args.n / t_ref:,.0f} images/s")
        print(f"Project.init:           {t_init:.2f} s = {args.n / t_init:,.0f} images/s")
        print(f"import of {len(paths):,} labels: {t_import:.3f} s")
        print(f"peak RSS during init + import: {status_mb('VmHWM'):.0f} MiB")


if __name__ == "__main__":
    main()

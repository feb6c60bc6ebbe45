"""``embed`` throughput and memory (activecrl.embeddings.embed), random timm weights, no network.

Three parts, each optional:

* ``--throughput``: images/s of ``embed`` for timm:resnet18 and timm:vit_small_patch16_224 at their
  default input size (224) over ``--n`` generated 64x64 PNGs streamed from a folder (decode,
  PIL resize to 224, forward), after one warm-up batch.
* ``--memory``: peak RSS of ``embed`` over folders of ``--pools`` generated 32x32 PNGs
  (timm:resnet18 at input size 32, so 50,000 images take about a minute), each in a fresh
  process; reported net of the output array, which is the only thing meant to grow with the pool.
* ``--gpu``: DINOv2 ViT-S/14 (vit_small_patch14_dinov2, img_size 224) over ``--gpu-n`` random
  32x32 uint8 images held in memory (CIFAR-10-sized), upscaled to 224 on the device, bf16 autocast,
  channels-last; images/s after a warm-up pass.

    python bench/bench_embed.py --throughput --memory
    python bench/bench_embed.py --gpu --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import reset_peak_rss, status_mb  # noqa: E402

from activecrl.data.stream import FileSource, TensorSource  # noqa: E402
from activecrl.embeddings.embed import embed, timm_encoder  # noqa: E402


def make_pngs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        path = folder / f"{i:06d}.png"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def throughput(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = make_pngs(Path(tmp), args.n, 64)
        for name in ("timm:resnet18", "timm:vit_small_patch16_224"):
            encoder = timm_encoder(name)
            source = FileSource(files, size=encoder.input_size)
            embed(encoder, FileSource(files[:args.batch_size], size=encoder.input_size),
                  batch_size=args.batch_size, device=args.device)  # warm-up
            start = time.perf_counter()
            out = embed(encoder, source, batch_size=args.batch_size, device=args.device)
            seconds = time.perf_counter() - start
            rows.append({"model": name, "input_size": encoder.input_size, "images": len(files),
                         "seconds": round(seconds, 2), "images_per_s": round(len(files) / seconds, 1),
                         "dim": int(out.shape[1]), "threads": torch.get_num_threads()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def memory_child(folder: str, batch_size: int) -> None:
    """One measurement, in its own process: peak RSS of embedding every PNG under ``folder``."""
    encoder = timm_encoder("timm:resnet18", input_size=32)
    source = FileSource.from_folder(folder, size=32)
    embed(encoder, FileSource(source.files[:batch_size], size=32), batch_size=batch_size)  # warm-up: allocator, threads
    reset_peak_rss()
    before = status_mb("VmRSS")
    start = time.perf_counter()
    out = embed(encoder, source, batch_size=batch_size)
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    out_mb = out.nbytes / 2**20
    print(json.dumps({"images": len(source), "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
                      "output_mb": round(out_mb, 1), "peak_minus_output_mb": round(peak - out_mb, 1),
                      "seconds": round(seconds, 1), "images_per_s": round(len(source) / seconds, 1)}))


def memory(args) -> list[dict]:
    rows = []
    root = Path(args.png_dir or tempfile.mkdtemp(prefix="embed_bench_"))
    for n in args.pools:
        folder = root / f"pool{n}"
        start = time.perf_counter()
        make_pngs(folder, n, 32)
        print(f"# {n} PNGs ready in {folder} ({time.perf_counter() - start:.0f} s)", flush=True)
        result = subprocess.run([sys.executable, __file__, "--memory-child", str(folder),
                                 "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        ratio = rows[-1]["peak_minus_output_mb"] / rows[0]["peak_minus_output_mb"]
        print(f"# peak RSS net of the output array: {rows[-1]['images']} vs {rows[0]['images']} images = {ratio:.3f}x")
    return rows


def gpu(args) -> dict:
    device = torch.device(args.device)
    encoder = timm_encoder("timm:vit_small_patch14_dinov2", input_size=224)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.gpu_n, 3, 32, 32), dtype=torch.uint8, generator=g)
    embed(encoder, TensorSource(images[:2 * args.gpu_batch]), batch_size=args.gpu_batch, device=device)  # warm-up
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = embed(encoder, TensorSource(images), batch_size=args.gpu_batch, device=device)
    seconds = time.perf_counter() - start
    row = {"model": "timm:vit_small_patch14_dinov2", "input_size": 224, "images": args.gpu_n,
           "batch_size": args.gpu_batch, "seconds": round(seconds, 2), "images_per_s": round(args.gpu_n / seconds, 1),
           "dim": int(out.shape[1]), "device": torch.cuda.get_device_name(device)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--memory", action="store_true")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--n", type=int, default=256, help="images of the throughput run")
    p.add_argument("--pools", type=int, nargs="+", default=[5000, 50000], help="pool sizes of the memory run")
    p.add_argument("--png-dir", default=None, help="keep the generated PNG pools here (reused if present)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gpu-n", type=int, default=50000)
    p.add_argument("--gpu-batch", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.batch_size)
        return
    results = {}
    if args.throughput:
        results["throughput"] = throughput(args)
    if args.memory:
        results["memory"] = memory(args)
    if args.gpu:
        results["gpu"] = gpu(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Where the CPU training step spends its time: small_cnn / small_cnn4 vs the plain reference network.

One process, interleaved rounds, median ms per step (batch 128, 32x32 RGB, SGD step included):
the library's ``train_step`` on small_cnn and small_cnn4 with and without channels_last, small_cnn in a
bare loop (no trainer), and the plain script's network (``bench/plain_cpu_reference.py``). Also the batch
gather+augment of ``DeviceData`` alone.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_cpu_step.py --threads 1
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plain_cpu_reference import net  # noqa: E402

from activecrl.data import DeviceData  # noqa: E402
from activecrl.models import build_model  # noqa: E402
from activecrl.training.trainers import TrainConfig, build_trainer  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    b = a.batch_size
    torch.manual_seed(0)
    x = torch.randn(b, 3, 32, 32)
    y = torch.randint(0, 10, (b,))
    idx = torch.arange(b)
    cases = {}
    for name, arch, cl in (("trainer small_cnn channels_last", "small_cnn", True),
                           ("trainer small_cnn NCHW", "small_cnn", False),
                           ("trainer small_cnn4 channels_last (presets)", "small_cnn4", True),
                           ("trainer small_cnn4 NCHW", "small_cnn4", False)):
        model = build_model(arch, num_classes=10)
        xin = x.contiguous(memory_format=torch.channels_last) if cl else x
        if cl:
            model = model.to(memory_format=torch.channels_last)
        trainer = build_trainer("baseline", TrainConfig(channels_last=cl))
        opt = trainer.make_optimizer(model)
        cases[name] = (lambda t=trainer, m=model, o=opt, xi=xin: t.train_step(m, o, xi, y, idx))
    for name, model in (("bare loop small_cnn NCHW", build_model("small_cnn", num_classes=10)),
                        ("bare loop plain-script net NCHW", net())):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

        def step(m=model, o=opt):
            loss = F.cross_entropy(m(x), y)
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
        cases[name] = step
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
    data = DeviceData(images, torch.zeros(4096, dtype=torch.long), (0.5,) * 3, (0.25,) * 3, augment=True,
                      device="cpu", channels_last=True)
    gen = torch.Generator().manual_seed(0)
    it = {"batches": None}

    def gather():
        if it["batches"] is None:
            it["batches"] = data.train_batches(torch.arange(4096), b, gen)
        try:
            next(it["batches"])
        except StopIteration:
            it["batches"] = None
    cases["DeviceData gather+augment+normalise only"] = gather
    for f in cases.values():
        for _ in range(2):
            f()
    times = {k: [] for k in cases}
    for _ in range(a.rounds):
        for k, f in cases.items():
            s = time.perf_counter()
            for _ in range(a.steps):
                f()
            times[k].append((time.perf_counter() - s) / a.steps)
    ref = statistics.median(times["bare loop plain-script net NCHW"])
    print(f"batch {b}, threads {a.threads}, {a.rounds} rounds x {a.steps} steps (median ms per step)")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:45s} {m * 1e3:8.2f} ms  {b / m:7.0f} img/s  x{m / ref:.2f} of the plain-script step")


if __name__ == "__main__":
    main()

"""Which nearest-center search core-set uses: faiss on the CPU, faiss on the GPU, or torch."""

import sys
import types

import numpy as np
import pytest
import torch

from activecrl.strategies import coreset as cs

faiss = pytest.importorskip("faiss")


def _fake_faiss(gpus: int | None, calls: list | None = None):
    """A faiss module: the real CPU index, plus GPU classes (backed by the CPU index) if gpus is not None."""
    fake = types.ModuleType("faiss")
    fake.IndexFlatL2 = faiss.IndexFlatL2
    if gpus is not None:
        class GpuIndexFlatConfig:
            device = 0

        class StandardGpuResources:
            pass

        class GpuIndexFlatL2(faiss.IndexFlatL2):
            def __init__(self, resources, d, config):
                assert isinstance(resources, StandardGpuResources)
                calls.append(config.device)
                super().__init__(d)

        fake.GpuIndexFlatConfig, fake.StandardGpuResources, fake.GpuIndexFlatL2 = \
            GpuIndexFlatConfig, StandardGpuResources, GpuIndexFlatL2
        fake.get_num_gpus = lambda: gpus
    return fake


def test_cpu_features_use_faiss_cpu_whatever_faiss_is(monkeypatch):
    for fake in (_fake_faiss(None), _fake_faiss(1, [])):
        monkeypatch.setitem(sys.modules, "faiss", fake)
        assert cs.nearest_center_backend("cpu") == "faiss-cpu"


def test_cuda_features_use_faiss_gpu_only_when_faiss_has_gpu_support(monkeypatch):
    cases = [(_fake_faiss(None), "torch"),      # faiss-cpu: no GPU classes
             (_fake_faiss(0, []), "torch"),     # a GPU build that sees no GPU
             (_fake_faiss(2, []), "faiss-gpu"),
             (None, "torch")]                   # no faiss at all (import fails)
    for fake, want in cases:
        monkeypatch.setitem(sys.modules, "faiss", fake)
        assert cs.nearest_center_backend(torch.device("cuda", 1)) == want
        assert cs.nearest_center_backend("cuda") == want
    monkeypatch.setitem(sys.modules, "faiss", _fake_faiss(2, []))
    assert cs.nearest_center_backend("mps") == "torch"  # faiss GPU indexes are CUDA only


def test_faiss_gpu_search_runs_on_the_features_device_and_matches_torch(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "faiss", _fake_faiss(2, calls))
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    got = cs._faiss_nearest(x, c, gpu=torch.device("cuda", 1))
    want = cs.nearest_center_sq_dist(x, c, "cpu", use_faiss=False).numpy()
    assert calls == [1]  # the index was built on the features' GPU
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_use_faiss_forces_the_search(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(50, 8, generator=g), torch.randn(5, 8, generator=g)
    used = []
    real = cs._faiss_nearest
    monkeypatch.setattr(cs, "_faiss_nearest", lambda *a: used.append(a[2]) or real(*a))
    cs.nearest_center_sq_dist(x, c, "cpu")
    cs.nearest_center_sq_dist(x, c, "cpu", use_faiss=False)
    assert used == [None]  # the CPU default is faiss-cpu; use_faiss=False is torch


@pytest.mark.skipif(not torch.cuda.is_available() or not cs._faiss_has_gpu(),
                    reason="needs CUDA and faiss with GPU support (pip install -e '.[gpu]')")
def test_faiss_gpu_matches_torch_on_cuda():
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(5000, 128, generator=g).cuda(), torch.randn(700, 128, generator=g).cuda()
    assert cs.nearest_center_backend(x.device) == "faiss-gpu"
    got = cs.nearest_center_sq_dist(x, c, x.device)
    want = cs.nearest_center_sq_dist(x, c, x.device, use_faiss=False)
    assert got.device == x.device
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)

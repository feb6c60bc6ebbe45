"""Streamed embeddings (``activecrl.embeddings.embed``) and the image sources behind them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from activecrl.core.errors import ConfigError, DataError
from activecrl.data.stream import FileSource, TensorSource, labeled_folder
from activecrl.embeddings import embed as embed_mod
from activecrl.embeddings.embed import embed_dataset
from activecrl.embeddings.load import load_embeddings

timm = pytest.importorskip("timm")

ARCH = "vit_tiny_patch16_224"


def _folder(root, sizes=((40, 30), (24, 24), (50, 64))):
    """train/{a,b} and test/{a,b} with images of mixed sizes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _weights(tmp_path, seed=0, name="w.safetensors"):
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    body = timm.create_model(ARCH, num_classes=0, img_size=32)
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(path))
    return path, body.eval()


def _direct(body, files, size=32):
    """The reference: PIL decode + bicubic resize, timm normalisation, timm's own forward."""
    x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) for f in files])
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    x = (x - 0.5) / 0.5  # the ViT's pretrained config: mean = std = 0.5
    with torch.no_grad():
        return torch.nn.functional.normalize(body.forward_head(body.forward_features(x), pre_logits=True), dim=1)


def test_embed_folder_equals_direct_forward_and_is_reused(tmp_path, monkeypatch):
    data = _folder(tmp_path / "data")
    weights, body = _weights(tmp_path)
    out = tmp_path / "emb"
    result = embed_dataset(f"timm:{ARCH}", data, out, weights=weights, input_size=32, batch_size=4,
                           dtype="float32", device="cpu")
    assert not result.reused and (result.n_train, result.n_test, result.dim) == (6, 4, 192)
    listing = labeled_folder(data)
    emb = np.load(out / "embeddings.npy")
    torch.testing.assert_close(torch.from_numpy(emb), _direct(body, listing["train_files"]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(np.load(out / "test_embeddings.npy")),
                               _direct(body, listing["test_files"]), atol=1e-5, rtol=1e-4)
    assert np.load(out / "labels.npy").tolist() == [0, 0, 0, 1, 1, 1]
    loaded, _ = load_embeddings(out, 6)  # the layout --embeddings reads
    assert loaded.shape == (6, 192)

    def no_forward(*args, **kwargs):
        raise AssertionError("the embeddings should have been reused")

    monkeypatch.setattr(embed_mod, "embed", no_forward)
    again = embed_dataset(f"timm:{ARCH}", data, out, weights=weights, input_size=32, dtype="float32", device="cpu")
    assert again.reused and again.fingerprint == result.fingerprint
    # a changed weights file (same path) invalidates: the forward runs again
    _weights(tmp_path, seed=1)
    with pytest.raises(AssertionError, match="reused"):
        embed_dataset(f"timm:{ARCH}", data, out, weights=weights, input_size=32, dtype="float32", device="cpu")


def test_embed_named_dataset_in_float16(tmp_path):
    from tests.conftest import make_blobs_dataset

    ds = make_blobs_dataset(n_train=10, n_test=5, size=16, channels=3)
    seen = []
    result = embed_dataset("timm:resnet18", ds, tmp_path / "e", input_size=32, batch_size=4, device="cpu",
                           progress=seen.append)
    emb = np.load(tmp_path / "e" / "embeddings.npy")
    assert emb.dtype == np.float16 and emb.shape == (10, 512) and result.n_test == 5
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=1e-2)
    assert seen[-1].split == "train" and seen[-1].done == 10 and seen[-1].images_per_s > 0
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["fingerprint"]["preprocessing"]["input_size"] == 32


def test_embed_a_pretrain_encoder(tmp_path):
    from activecrl.embeddings.pretrain import PretrainConfig, pretrain
    from tests.conftest import make_blobs_dataset

    ds = make_blobs_dataset(n_train=40, n_test=10, size=8, channels=1)
    pretrain(PretrainConfig(method="patches", centroids=4, kmeans_patches=200, pca_dim=4, knn_k=0,
                            patch_size=3, device="cpu"), tmp_path / "p", dataset=ds)
    result = embed_dataset(str(tmp_path / "p"), ds, tmp_path / "e", device="cpu", dtype="float32")
    # the same rows pretrain wrote (both L2-normalised patch features of the same images)
    np.testing.assert_allclose(np.load(tmp_path / "e" / "embeddings.npy"), np.load(tmp_path / "p" / "embeddings.npy"),
                               atol=1e-4)
    assert result.dim == 4


def test_file_source_streams_in_order_and_checks(tmp_path):
    data = _folder(tmp_path / "d")
    files = labeled_folder(data)["train_files"]
    batches = list(FileSource(files, size=(8, 10)).batches(4))
    assert [b.shape for b in batches] == [(4, 3, 8, 10), (2, 3, 8, 10)] and batches[0].dtype == torch.uint8
    first = np.asarray(Image.open(files[0]).convert("RGB").resize((10, 8), Image.BICUBIC))
    assert np.array_equal(batches[0][0].permute(1, 2, 0).numpy(), first)
    with pytest.raises(DataError, match="same size"):
        list(FileSource(files).batches(6))
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.png"):
        list(FileSource([tmp_path / "bad.png"], size=8).batches(2))
    source = TensorSource(torch.zeros(5, 1, 4, 4, dtype=torch.uint8))
    assert [len(b) for b in source.batches(2)] == [2, 2, 1]
    assert FileSource.from_folder(data / "train", size=4).fingerprint() != FileSource(files, size=5).fingerprint()


def test_embed_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"method": "patches"}))
    with pytest.raises(ConfigError, match="not written by embed"):
        embed_dataset("timm:resnet18", _folder(tmp_path / "d"), tmp_path / "run", device="cpu")

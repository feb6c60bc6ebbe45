"""How `pretrain --method patches` got its defaults: 20-NN accuracy on a split of the CIFAR-10
*training* images (the test split is never read).

For each (centroids K, stride) the codebook (whitening + k-means) is learnt on windows of all
50,000 training images, labels unused; features are computed for 20,000 reference images and
5,000 held-out ones (a seeded permutation), and each held-out image is classified by a majority
vote of its 20 nearest references (cosine), for two ways of turning the pooled features into an
embedding, both learnt on the references only:

* ``plain``: the paper's standardisation, PCA to 256 dimensions, L2 normalisation;
* ``final``: what `pretrain` does (``activecrl.embeddings.patches.fit_projection``): square root first,
  PCA whitened with regularised eigenvalues.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/patches_holdout.py --dataset data/cifar10.tar.gz
    # --configs K:stride,... (default the scan in bench/README.md) --kmeans-patches --kmeans-iters
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from activecrl.data import load_dataset
from activecrl.embeddings.patches import FEATURE_EPS, fit_projection, learn_codebook, principal_directions
from activecrl.embeddings.pretrain import knn_accuracy

DEFAULT_CONFIGS = "50:1,100:1,200:1,400:1,100:2,200:2,400:2,800:2,1600:2"


def plain(ref: torch.Tensor, held: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = ref.mean(0), (ref.var(0) + FEATURE_EPS).sqrt()
    a, b = (ref - mean) / std, (held - mean) / std
    vectors, _ = principal_directions(a, dim, seed=0)
    return F.normalize(a @ vectors, dim=1), F.normalize(b @ vectors, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="K:stride,...")
    parser.add_argument("--kmeans-patches", type=int, default=100_000)
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--n-ref", type=int, default=20_000)
    parser.add_argument("--n-held", type=int, default=5_000)
    args = parser.parse_args()
    ds = load_dataset(args.dataset)
    images, labels = ds.train_images, ds.train_labels.numpy()
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    ref, held = perm[:args.n_ref], perm[-args.n_held:]
    cpu = torch.device("cpu")
    pixels = [F.normalize(images[i].float().flatten(1) - images.float().mean(0).flatten(), dim=1) for i in (ref, held)]
    print(f"raw pixels (mean-centred): {knn_accuracy(pixels[0].numpy(), labels[ref], pixels[1].numpy(), labels[held]):.4f}")
    print("K | stride | codebook s | features s | plain | final")
    for item in args.configs.split(","):
        k, stride = (int(v) for v in item.split(":"))
        start = time.perf_counter()
        enc = learn_codebook(images, patch_size=6, stride=stride, centroids=k, kmeans_patches=args.kmeans_patches,
                             kmeans_iters=args.kmeans_iters, seed=0)
        codebook = time.perf_counter() - start
        start = time.perf_counter()
        f_ref, f_held = enc.all_features(images[ref], cpu), enc.all_features(images[held], cpu)
        features = time.perf_counter() - start
        a, b = plain(f_ref, f_held, args.dim)
        acc_plain = knn_accuracy(a.numpy(), labels[ref], b.numpy(), labels[held])
        a = fit_projection(enc, f_ref, args.dim, seed=0)  # overwrites f_ref: plain() has used it
        b = enc.project(f_held)
        acc_final = knn_accuracy(a.numpy(), labels[ref], b.numpy(), labels[held])
        print(f"{k} | {stride} | {codebook:.1f} | {features:.0f} | {acc_plain:.4f} | {acc_final:.4f}", flush=True)


if __name__ == "__main__":
    main()

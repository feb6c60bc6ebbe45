"""Build the CIFAR-10 archive the results were measured on: an ImageFolder tar of JPEG images.

    python results/make_cifar10_archive.py data/cifar10.tar.gz [--download-dir DIR] [--quality 75]

torchvision downloads CIFAR-10 (the official pickled batches) into ``--download-dir``; every image
is then written as ``cifar10/{train,test}/<class>/NNNN.jpg`` (JPEG quality 75, the compression of
the copy the committed results used) into one ``.tar.gz`` that ``activecrl`` reads in place
(``--dataset data/cifar10.tar.gz``). JPEG costs a little accuracy against the official release,
so compare methods with each other, not with published figures.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_archive(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes, path: Path, quality: int = 75) -> Path:
    """``splits``: {"train": (uint8 images (N, H, W, 3), int labels (N,)), "test": ...} -> ``path`` (.tar.gz)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for split, (images, labels) in splits.items():
            counts = dict.fromkeys(range(len(classes)), 0)
            for image, label in zip(images, labels):
                label = int(label)
                buffer = io.BytesIO()
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
                info = tarfile.TarInfo(f"cifar10/{split}/{classes[label]}/{counts[label]:04d}.jpg")
                info.size = buffer.tell()
                buffer.seek(0)
                tar.addfile(info, buffer)
                counts[label] += 1
    partial.replace(path)  # a complete archive or none
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the .tar.gz to write, e.g. data/cifar10.tar.gz")
    parser.add_argument("--download-dir", type=Path, default=Path("data/torchvision"),
                        help="where torchvision keeps the downloaded batches")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality")
    args = parser.parse_args()
    from torchvision.datasets import CIFAR10

    splits = {}
    for split in ("train", "test"):
        data = CIFAR10(str(args.download_dir), train=split == "train", download=True)
        splits[split] = (data.data, np.asarray(data.targets))
    print(write_archive(splits, CLASSES, args.out, args.quality))


if __name__ == "__main__":
    main()

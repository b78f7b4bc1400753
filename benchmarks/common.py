"""What the benchmarks share and the notebooks never use: a median timer, settings from the command line and a
torchvision-style dataset."""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import data  # noqa: E402


def median_seconds(fn, repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls of ``fn()`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def parse_settings(items: list[str]) -> dict:
    """``["key=value", ...]`` with Python-literal values (``8``, ``2e-3``, ``False``, ``[6.0, 7.0]``), as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected key=value, found {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"{key}: expected a Python literal such as 8, 2e-3, False or [6.0, 7.0]; found {value!r}")
    return out


class CachedImageDataset(torch.utils.data.Dataset):
    """A torchvision-style dataset over the prepared cache, ``(PIL image, label)`` items, for the
    original projects' DataLoader loop that the zoo benchmark compares against."""

    def __init__(self, name, split="train", transform=None, target_transform=None, root=None):
        x, y = data.load_tensors(name, split, root)
        self.data = x.numpy().transpose(0, 2, 3, 1)
        self.data = self.data[..., 0] if self.data.shape[-1] == 1 else self.data   # grey: (N, H, W)
        self.targets, self.classes, self.train = y.tolist(), data.class_names(name), split == "train"
        self.transform, self.target_transform = transform, target_transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        from PIL import Image
        img, target = Image.fromarray(np.ascontiguousarray(self.data[index])), self.targets[index]
        img = self.transform(img) if self.transform is not None else img
        return img, (self.target_transform(target) if self.target_transform is not None else target)

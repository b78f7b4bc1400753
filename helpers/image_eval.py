"""Offline metrics for generated cat and dog images: a judge CNN trained on real images (class
consistency), a Fréchet distance in its features, nearest training images, a linear probe."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, runtime

_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def _prep(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> per-channel standardised float."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class CatDogCNN(nn.Module):
    """A small VGG-style CNN: one double-conv stage per ``channels`` entry, global pool, linear.
    :meth:`features` (N, channels[-1]) is the space of the Fréchet distance; inputs uint8 or [0, 1]."""

    def __init__(self, channels=(32, 64, 128), n_classes: int = 2):
        super().__init__()
        self.channels, self.n_classes = [int(c) for c in channels], int(n_classes)
        ins = [3] + self.channels[:-1]
        self.body = nn.Sequential(*[_block(a, b) for a, b in zip(ins, self.channels)])
        self.fc = nn.Linear(self.channels[-1], self.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(_prep(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def random_shift_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random left-right flip and random crop after ``pad`` reflect-padding, batched."""
    n, c, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    di = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (di[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dj[:, None] + torch.arange(w)[None])[:, None, None, :]
    return xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_blur(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur a random fraction ``p`` of the images (average-pool by 2 or 4, upsample bilinearly): a judge
    that saw only sharp photographs would call every blurred (decoded) image the same class."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    out, pick = x, torch.rand(n, generator=generator)
    for k, lo, hi in ((2, 0.0, p / 2), (4, p / 2, p)):
        m = (pick >= lo) & (pick < hi)
        if m.any():
            out = out.clone() if out is x else out
            out[m] = F.interpolate(F.avg_pool2d(x[m], k), size=(h, w), mode="bilinear", align_corners=False)
    return out


def train_classifier(x_uint8: torch.Tensor, y: torch.Tensor, channels=(32, 64, 128), epochs: int = 8,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4, seed: int = 0,
                     blur: float = 0.0, device=None) -> tuple[CatDogCNN, dict]:
    """:class:`CatDogCNN` trained with AdamW (one-cycle rate) on flipped, shifted and (``blur``) blurred
    real images. Returns the model in eval mode and ``{"loss": [...]}`` per step."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = runtime.device(device)
    model = CatDogCNN(channels, int(y.max()) + 1).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(x_uint8)
    per_epoch = max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch, pct_start=0.2)
    hist = {"loss": []}
    bar = runtime.progress(total=epochs * per_epoch, desc="classifier")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for k in range(per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            xb = random_blur(random_shift_flip(x_uint8[idx].float() / 255.0, 4, gen), blur, gen).to(device)
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), y[idx].to(device))
            runtime.check_finite(loss, model="cat/dog classifier", step=len(hist["loss"]), blame=f"lr={lr}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            hist["loss"].append(loss.item())
            bar.update(1)
    bar.close()
    model.eval()
    return model.to(memory_format=torch.contiguous_format), hist


@torch.no_grad()
def predict(model: CatDogCNN, x: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities (N, K), features (N, F))`` of images (uint8 or [0, 1] floats), on the CPU."""
    model.eval()
    dev = runtime.device_of(model)
    feats = torch.cat([model.features(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])
    return model.fc(feats.to(dev)).softmax(-1).cpu(), feats


def accuracy(model: CatDogCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in % on images ``x`` with (true or requested) labels ``y``."""
    return 100.0 * (predict(model, x)[0].argmax(1) == torch.as_tensor(y)).float().mean().item()


CLS_KEYS = ("seed", "n_train", "clf_channels", "clf_epochs", "clf_batch_size", "clf_lr", "clf_blur")


def build_or_load_classifier(cfg, x_uint8: torch.Tensor, y: torch.Tensor, rebuild: bool = False, device=None):
    """The judge for the ``catdog`` settings ``cfg``, cached by the ``clf_*`` settings."""
    return cached_classifier("catdog_classifier", {k: cfg[k] for k in CLS_KEYS}, x_uint8, y, cfg["clf_channels"],
                             cfg["clf_epochs"], cfg["clf_batch_size"], cfg["clf_lr"], seed=cfg["seed"],
                             blur=cfg["clf_blur"], device=device, rebuild=rebuild)


def cached_classifier(kind: str, key: dict, x_uint8: torch.Tensor, y: torch.Tensor, channels, epochs: int,
                      batch_size: int, lr: float, seed: int, blur: float, device=None,
                      rebuild: bool = False) -> CatDogCNN:
    """A :func:`train_classifier` model cached as artifact ``kind`` under ``key`` (judge and selector)."""
    arch = {"channels": list(channels), "n_classes": int(y.max()) + 1}
    return artifacts.cached_model(kind, key, lambda: train_classifier(
        x_uint8, y, channels, epochs, batch_size, lr, seed=seed, blur=blur, device=device),
        lambda a: CatDogCNN(a["channels"], a["n_classes"]), arch, device=device, rebuild=rebuild)[0]


def frechet_distance(feats_a, feats_b) -> float:
    r"""Fréchet distance between Gaussians fitted to feature sets (N_a, F) and (N_b, F), in float64;
    :math:`\mathrm{tr}(\Sigma_1\Sigma_2)^{1/2}` from the eigenvalues of :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}`."""
    a = np.asarray(torch.as_tensor(feats_a).double())
    b = np.asarray(torch.as_tensor(feats_b).double())
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (N, F) feature sets with the same F; got {a.shape} and {b.shape}")
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(s1_half @ s2 @ s1_half), 0, None)).sum()
    # FD = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})
    fd = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(fd, 0.0)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, batch_size: int = 256):
    """For each query image the closest reference image, RMS pixel distance in [0, 1] units.
    Returns ``(distances (Q,), indices (Q,))``; 0 is an exact copy."""
    def flat(x):
        return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).reshape(len(x), -1)

    r = flat(reference)
    r2 = (r * r).sum(1)
    dists, idxs = [], []
    for i in range(0, len(queries), batch_size):
        q = flat(queries[i:i + batch_size])
        # ||q - r||^2 = ||q||^2 - 2 q.r + ||r||^2
        d, j = ((q * q).sum(1, keepdim=True) - 2 * q @ r.T + r2[None]).clamp(min=0).min(1)
        dists.append((d / r.shape[1]).sqrt())
        idxs.append(j)
    return torch.cat(dists), torch.cat(idxs)


def linear_probe_accuracy(z_train, y_train, z_test, y_test, max_iter: int = 500) -> float:
    """Accuracy in % of a logistic regression on standardised train codes, scored on test codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(np.asarray(z_train), np.asarray(y_train))
    return 100.0 * float(clf.score(np.asarray(z_test), np.asarray(y_test)))


def evaluate_generated(judge: CatDogCNN, images: torch.Tensor, labels, real_features: torch.Tensor) -> dict:
    """Class consistency (%, overall and ``class_consistency_<c>``) and ``feature_fd`` to ``real_features``."""
    probs, feats = predict(judge, images)
    labels = torch.as_tensor(labels)
    hit = (probs.argmax(1) == labels).float()
    out = {"class_consistency": 100.0 * hit.mean().item(), "feature_fd": frechet_distance(feats, real_features)}
    out.update({f"class_consistency_{c}": 100.0 * hit[labels == c].mean().item() for c in labels.unique().tolist()})
    return out


def tile(images: torch.Tensor, nrow: int, pad: int = 1, scale: int = 2) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] -> one uint8 picture, rows of ``nrow``, upscaled ``scale`` times."""
    x = images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    n, h, w, c = x.shape
    canvas = np.ones((int(np.ceil(n / nrow)) * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    return (canvas.repeat(scale, 0).repeat(scale, 1) * 255).round().astype(np.uint8)

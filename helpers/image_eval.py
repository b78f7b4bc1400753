r"""Honest, offline metrics for generated cat and dog images.

The usual score, FID, compares Inception-v3 features of generated and real
images; its weights are downloaded at run time, so it is not our default.
We measure the same things with a judge trained here, on real images only:

1. **An independent classifier** (:class:`CatDogCNN`), a small CNN trained on
   the real training images (never on the autoencoder's outputs). Its accuracy
   on the real test set says how good a judge it is; its accuracy on generated
   images of a requested class is the **class consistency** of the generator.
2. **A Fréchet distance in that classifier's feature space** (:func:`frechet_distance`).
   Fit a Gaussian :math:`\mathcal N(\mu, \Sigma)` to the penultimate features of
   each image set; then

   .. math:: \mathrm{FD} = \lVert \mu_1 - \mu_2 \rVert^2
             + \mathrm{tr}\big(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2}\big).

   A number alone means little: we report it beside the **floor**, the FD of
   real training images against real test images with the same set sizes.
3. **Nearest-neighbour distances** to the training set (:func:`nearest_neighbours`):
   a generator that memorised would put samples at distance ~0 from a training
   image; we compare with the distances of real test images to the training set.
4. **A linear probe** (:func:`linear_probe_accuracy`): logistic regression on the
   latents, trained on training codes and scored on test codes, measures how
   separable the classes are in latent space.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, runtime

# ---------------------------------------------------------------------------
# The independent classifier
# ---------------------------------------------------------------------------

_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


def _prep(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> per-channel standardised float."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (x - _MEAN.to(x.device)) / _STD.to(x.device)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


class CatDogCNN(nn.Module):
    """A small VGG-style CNN for 32x32 cats vs dogs: three double-conv stages, global pool, linear.

    ``channels`` are the widths of the stages; :meth:`features` returns the
    global-average-pooled last stage (N, channels[-1]), the space of the
    Fréchet distance. Inputs are images as uint8 or floats in [0, 1].
    """

    def __init__(self, channels=(32, 64, 128), n_classes: int = 2):
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.n_classes = int(n_classes)
        stages, c_in = [], 3
        for c in self.channels:
            stages.append(_block(c_in, c))
            c_in = c
        self.body = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, self.n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(_prep(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def random_shift_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Batched augmentation: random left-right flip and random crop after ``pad`` reflect-padding."""
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
    """Blur a random fraction ``p`` of the images: average-pool by 2 or 4, then upsample bilinearly.

    A judge that has only seen sharp photographs calls every blurred image the
    same class; decoded latents are blurred, so without this the judge would
    measure sharpness instead of "cat or dog".
    """
    if p <= 0:
        return x
    n, _, h, w = x.shape
    out = x
    pick = torch.rand(n, generator=generator)
    for k, lo, hi in ((2, 0.0, p / 2), (4, p / 2, p)):
        m = (pick >= lo) & (pick < hi)
        if m.any():
            low = F.avg_pool2d(x[m], k)
            out = out.clone() if out is x else out
            out[m] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return out


def train_classifier(x_uint8: torch.Tensor, y: torch.Tensor, channels=(32, 64, 128), epochs: int = 8,
                     batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4,
                     seed: int = 0, blur: float = 0.0, device=None) -> tuple[CatDogCNN, dict]:
    """Train :class:`CatDogCNN` on real images with flips, shifts and (``blur`` > 0) random blur.

    AdamW with a one-cycle learning rate; ``blur`` is the fraction of each batch
    blurred by :func:`random_blur`; ``device`` where to train (None: the runtime's; batches are
    augmented on the CPU with a seeded generator, then moved there).

    Returns the model in eval mode and ``{"loss": [...]}`` per step.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = runtime.device(device)
    model = CatDogCNN(channels, int(y.max()) + 1).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(x_uint8)
    steps_per_epoch = max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    hist = {"loss": []}
    bar = runtime.progress(total=epochs * steps_per_epoch, desc="classifier")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            xb = random_blur(random_shift_flip(x_uint8[idx].float() / 255.0, 4, gen), blur, gen).to(device)
            loss = F.cross_entropy(model(xb.contiguous(memory_format=torch.channels_last)), y[idx].to(device))
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
    """``(probabilities (N, K), features (N, F))`` of images x (uint8 or [0, 1] floats), on the CPU."""
    model.eval()
    dev = runtime.device_of(model)
    probs, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].to(dev))
        feats.append(f.cpu())
        probs.append(model.fc(f).softmax(-1).cpu())
    return torch.cat(probs), torch.cat(feats)


def accuracy(model: CatDogCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in % of ``model`` on images ``x`` with (requested or true) labels ``y``."""
    p, _ = predict(model, x)
    return 100.0 * (p.argmax(1) == torch.as_tensor(y)).float().mean().item()


CLS_KEYS = ("seed", "n_train", "clf_channels", "clf_epochs", "clf_batch_size", "clf_lr", "clf_blur")


def build_or_load_classifier(cfg, x_uint8: torch.Tensor, y: torch.Tensor, rebuild: bool = False,
                             device=None):
    """The independent classifier for the ``catdog`` settings ``cfg``, cached by its own settings,
    on ``device`` (None: :func:`helpers.runtime.device`)."""
    return cached_classifier("catdog_classifier", {k: cfg[k] for k in CLS_KEYS}, x_uint8, y,
                             cfg["clf_channels"], cfg["clf_epochs"], cfg["clf_batch_size"], cfg["clf_lr"],
                             seed=cfg["seed"], blur=cfg["clf_blur"], device=device, rebuild=rebuild)


def cached_classifier(kind: str, key: dict, x_uint8: torch.Tensor, y: torch.Tensor, channels, epochs: int,
                      batch_size: int, lr: float, seed: int, blur: float, device=None,
                      rebuild: bool = False) -> CatDogCNN:
    """A :class:`CatDogCNN` trained with :func:`train_classifier`, cached as artifact ``kind`` keyed
    by ``key`` (the settings that change what is trained), returned on ``device`` (None:
    :func:`helpers.runtime.device`) in eval mode.
    The judge and notebook 04's guidance selector are both made here."""

    def build():
        model, _ = train_classifier(x_uint8, y, channels, epochs, batch_size, lr, seed=seed,
                                    blur=blur, device=device)
        return model

    def save(model, path):
        artifacts.save_model(path, model, kind, {"channels": list(model.channels), "n_classes": model.n_classes},
                             metadata={"config": key})

    def load(path):
        model, _, _ = artifacts.load_model(path, kind, lambda arch: CatDogCNN(arch["channels"], arch["n_classes"]),
                                           device=device)
        return model

    return artifacts.cached(kind, key, build, save, load, rebuild=rebuild)


# ---------------------------------------------------------------------------
# Distances
# ---------------------------------------------------------------------------

def frechet_distance(feats_a, feats_b) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F).

    Uses the eigenvalues of :math:`\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}` for
    :math:`\mathrm{tr}(\Sigma_1\Sigma_2)^{1/2}` (symmetric, so stable in float64).
    """
    a = np.asarray(torch.as_tensor(feats_a).double())
    b = np.asarray(torch.as_tensor(feats_b).double())
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (N, F) feature sets with the same F; got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # \Sigma_1^{1/2} by eigendecomposition
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    # tr (\Sigma_1 \Sigma_2)^{1/2} = sum sqrt eig(\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})
    ev = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    tr_sqrt = np.sqrt(np.clip(ev, 0, None)).sum()
    # FD = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(fd, 0.0)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, batch_size: int = 256):
    """For each query image, the closest reference image in pixel space (RMS distance in [0, 1] units).

    ``queries`` (Q, C, H, W), ``reference`` (N, C, H, W), uint8 or [0, 1] floats.
    Returns ``(distances (Q,), indices (Q,))``; distance 0 means an exact copy.
    """
    def flat(x):
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x.reshape(len(x), -1)

    r = flat(reference)
    r2 = (r * r).sum(1)
    dists, idxs = [], []
    for i in range(0, len(queries), batch_size):
        q = flat(queries[i:i + batch_size])
        # ||q - r||^2 = ||q||^2 - 2 q.r + ||r||^2
        d2 = (q * q).sum(1, keepdim=True) - 2 * q @ r.T + r2[None]
        d, j = d2.clamp(min=0).min(1)
        dists.append((d / r.shape[1]).sqrt())
        idxs.append(j)
    return torch.cat(dists), torch.cat(idxs)


def linear_probe_accuracy(z_train, y_train, z_test, y_test, max_iter: int = 500) -> float:
    """Accuracy in % of a logistic regression trained on (standardised) train codes, on test codes."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    clf.fit(np.asarray(z_train), np.asarray(y_train))
    return 100.0 * float(clf.score(np.asarray(z_test), np.asarray(y_test)))


# ---------------------------------------------------------------------------
# Frames and figures of notebook 04 (helpers return figures; the notebook shows them)
# ---------------------------------------------------------------------------

def tile(images: torch.Tensor, nrow: int, pad: int = 1, scale: int = 2) -> np.ndarray:
    """Images (N, 3, H, W) in [0, 1] -> one uint8 picture (rows of ``nrow``), upscaled ``scale``x."""
    x = images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    n, h, w, c = x.shape
    ncol = int(np.ceil(n / nrow))
    canvas = np.ones((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, k = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = x[i]
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    return (canvas * 255).round().astype(np.uint8)


def trajectory_frames(decode, trajectory: list[dict], key: str = "x_t", nrow: int = 4,
                      inverse=None) -> tuple[list[np.ndarray], list[str]]:
    """One frame per entry of a sampler's trajectory: the decoded ``key`` ("x_t" or "x0_pred") of every sample, tiled.

    ``decode`` maps codes (n, d) to images in [0, 1]; ``inverse`` undoes the
    latent standardisation first. Captions count steps by each entry's ``"step"``
    (its index in the full run, when the trajectory was thinned) or else its position.
    Returns ``(frames, captions)``.
    """
    frames, captions = [], []
    n = trajectory[-1].get("step", len(trajectory) - 1) if trajectory else 0
    for i, step in enumerate(trajectory):
        z = step[key]
        if inverse is not None:
            z = inverse(z)
        frames.append(tile(decode(z), nrow))
        t = step["t"]
        captions.append(f"step {step.get('step', i)}/{n}: " + ("final sample" if t < 0 else f"t = {t}"))
    return frames, captions


def paired_frames(decode, trajectory: list[dict], inverse=None, nrow: int = 8):
    """Frames with two rows: decoded :math:`x_t` on top, decoded :math:`\\hat x_0` below."""
    frames, captions = [], []
    a, cap = trajectory_frames(decode, trajectory, "x_t", nrow, inverse)
    b, _ = trajectory_frames(decode, trajectory, "x0_pred", nrow, inverse)
    for fa, fb in zip(a, b):
        frames.append(np.concatenate([fa, fb], 0))
    return frames, [c + "  (top: D(x_t), bottom: D(x0 prediction))" for c in cap]


def reconstruction_figure(originals: torch.Tensor, reconstructions, mse: float | None = None):
    """Originals on top, reconstructions below; the title carries the test MSE (and PSNR).

    ``reconstructions`` is one tensor (N, 3, H, W) in [0, 1], or a dict ``{label: tensor}``
    for several models, one row each, labelled on the left.
    """
    import matplotlib.pyplot as plt

    n = len(originals)
    orig = originals.float() / 255.0 if originals.dtype == torch.uint8 else originals
    rows = reconstructions if isinstance(reconstructions, dict) else {"reconstruction": reconstructions}
    fig, ax = plt.subplots(figsize=(min(16, 0.8 * n), 1.1 * (len(rows) + 1)))
    ax.imshow(tile(torch.cat([orig, *rows.values()]), n, scale=1))
    ax.set_xticks([])
    h = orig.shape[-2] + 1
    ax.set_yticks([1 + h * (i + 0.5) for i in range(len(rows) + 1)], ["test images", *rows], fontsize=8)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    title = "test images and their reconstructions D(E(x))"
    if mse is not None:
        title += f"   (last row: test MSE per pixel {mse:.4f}, PSNR {-10 * np.log10(mse):.1f} dB)"
    ax.set_title(title, fontsize=9)
    return fig


def tsne_figure(embeddings: list[tuple[str, np.ndarray]], labels, class_names=("cat", "dog")):
    """One scatter panel per (title, (N, 2) embedding), points coloured by class."""
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    k = len(embeddings)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
    colors = ["tab:orange", "tab:blue"]
    for ax, (title, e) in zip(axes[0], embeddings):
        for c, name in enumerate(class_names):
            m = labels == c
            ax.scatter(e[m, 0], e[m, 1], s=4, alpha=0.6, color=colors[c % 2], label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    return fig


def denoising_path_figure(step_images: list[torch.Tensor], step_labels: list[str],
                          background: np.ndarray, background_labels, paths: list[np.ndarray],
                          path_labels, class_names=("cat", "dog")):
    """Images along the denoising steps (one row per class) beside the latent paths in 2-D.

    ``step_images[r]`` (S, 3, H, W) is row r (one sample, S steps); ``background``
    (N, 2) the projected training codes; ``paths`` a list of (S+1, 2) projected
    trajectories with classes ``path_labels``. Thumbnails are 1.3 inches wide and the
    figure is exactly as tall as the rows of thumbnails need (no blank band).
    """
    import matplotlib.pyplot as plt

    rows, S = len(step_images), len(step_labels)
    cell, side = 1.3, 4.2  # inches per thumbnail, width of the scatter panel
    height = max(cell * rows + 0.7, 3.6)
    fig = plt.figure(figsize=(cell * S + side + 0.9, height))
    left = 0.5 / fig.get_figwidth()
    right_start = (cell * S + 0.6) / fig.get_figwidth()
    top = 1 - 0.35 / height
    row_h = cell / height
    for r, imgs in enumerate(step_images):
        for s in range(S):
            ax = fig.add_axes([left + s * cell / fig.get_figwidth(), top - (r + 1) * row_h,
                               0.96 * cell / fig.get_figwidth(), 0.96 * row_h])
            ax.imshow(imgs[s].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(step_labels[s], fontsize=9)
            if s == 0:
                ax.set_ylabel(class_names[int(path_labels[r]) % len(class_names)] if r < len(path_labels)
                              else f"run {r}", fontsize=9)
    ax = fig.add_axes([right_start + 0.75 / fig.get_figwidth(), 0.6 / height,
                       (side - 0.6) / fig.get_figwidth(), 1 - 1.0 / height])
    colors = ["tab:orange", "tab:blue"]
    bl = np.asarray(background_labels)
    for c, name in enumerate(class_names):
        m = bl == c
        ax.scatter(background[m, 0], background[m, 1], s=2, alpha=0.15, color=colors[c % 2],
                   label=f"training codes: {name}")
    for p, c in zip(paths, path_labels):
        ax.plot(p[:, 0], p[:, 1], "-", color=colors[int(c) % 2], lw=1.2, alpha=0.9)
        ax.plot(p[0, 0], p[0, 1], "o", color="k", ms=3)
        ax.plot(p[-1, 0], p[-1, 1], "*", color=colors[int(c) % 2], ms=9, mec="k", mew=0.5)
    ax.set_title("latent paths, PCA of training codes (o start, * end)", fontsize=9)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, markerscale=4, loc="best")
    return fig


def neighbours_figure(samples: torch.Tensor, neighbours: torch.Tensor, distances, n: int = 10):
    """Generated samples (top) above their nearest training images (bottom), the distance printed below each pair."""
    import matplotlib.pyplot as plt

    n = min(n, len(samples))
    nb = neighbours[:n].float() / 255.0 if neighbours.dtype == torch.uint8 else neighbours[:n]
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 3.2), squeeze=False,
                             gridspec_kw={"hspace": 0.08, "wspace": 0.08})
    for i in range(n):
        axes[0][i].imshow(samples[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axes[1][i].imshow(nb[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        axes[1][i].text(0.5, -0.06, f"{float(distances[i]):.3f}", transform=axes[1][i].transAxes,
                        ha="center", va="top", fontsize=9)
        for ax in (axes[0][i], axes[1][i]):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("sample", fontsize=9)
    axes[1][0].set_ylabel("nearest\ntraining image", fontsize=9)
    fig.suptitle("generated (top) and nearest training image (bottom); RMS pixel distance below", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.86, bottom=0.12)
    return fig


def sweep_figure(xs, series: dict[str, list[float]], xlabel: str, floors: dict[str, float] | None = None):
    """One panel per metric against a swept setting (e.g. DDIM steps); dashed floors if given."""
    import matplotlib.pyplot as plt

    k = len(series)
    fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.0), squeeze=False)
    for ax, (name, ys) in zip(axes[0], series.items()):
        ax.plot(xs, ys, "o-")
        if floors and name in floors:
            ax.axhline(floors[name], ls="--", color="gray", label="real-vs-real")
            ax.legend(fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def evaluate_generated(judge: CatDogCNN, images: torch.Tensor, labels: torch.Tensor,
                       real_features: torch.Tensor) -> dict:
    """Class consistency (%, overall and per class) and feature FD against ``real_features``.

    ``images`` (n, 3, H, W) in [0, 1] generated for the requested ``labels``.
    """
    probs, feats = predict(judge, images)
    labels = torch.as_tensor(labels)
    hit = (probs.argmax(1) == labels).float()
    out = {"class_consistency": 100.0 * hit.mean().item(),
           "feature_fd": frechet_distance(feats, real_features)}
    for c in labels.unique().tolist():
        out[f"class_consistency_{c}"] = 100.0 * hit[labels == c].mean().item()
    return out

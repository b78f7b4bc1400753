r"""Judging generated digits (notebook 06) with CNNs of :mod:`helpers.classifiers` trained on real images only:
class consistency of generated digits and the Fréchet distance of the judge's penultimate features."""

from __future__ import annotations

import time

import torch

from . import artifacts, classifiers, data, runtime
from .image_eval import frechet_distance


def build_or_load_cnn(cfg, role: str, dataset: str, x_uint8: torch.Tensor, y: torch.Tensor,
                      rebuild: bool = False, device=None):
    """The ``role`` CNN ("judge" or "cnn": settings ``<role>_spec``, ``<role>_epochs``, ``<role>_shift`` in pixels)
    trained on real images, cached: ``(model, n_parameters)``."""
    if role not in ("judge", "cnn"):
        raise ValueError(f"unknown CNN role {role!r}: expected 'judge' or 'cnn'")
    key = {"seed": cfg["seed"], "spec": cfg[f"{role}_spec"], "epochs": cfg[f"{role}_epochs"],
           "shift": cfg[f"{role}_shift"], "n_train": cfg["n_train"], "val_size": cfg["val_size"],
           "dataset": dataset}
    # the series' MNIST CNN layout (5x5 and 3x3 stride-2 convs), with the widths of the spec
    full = {**classifiers.default_spec(dataset, "cnn"), **cfg[f"{role}_spec"]}

    def build():
        model = classifiers.build_model(full, seed=cfg["seed"]).to(runtime.device(device))
        start = time.perf_counter()
        losses = classifiers.train_epochs(
            model, data.normalize(x_uint8, dataset), y, epochs=cfg[f"{role}_epochs"], batch_size=128, lr=2e-3,
            generator=torch.Generator().manual_seed(cfg["seed"]), augment_shift=cfg[f"{role}_shift"], progress=True)
        return model.eval(), {"loss": losses, "seconds": time.perf_counter() - start}

    model, _ = artifacts.cached_model(f"digit_{role}_{dataset}", key, build,
                                      lambda arch: classifiers.build_model(arch["spec"]), {"spec": full},
                                      kind="digit_cnn", device=device, rebuild=rebuild, freeze=True)
    return model, classifiers.count_params(full)


@torch.no_grad()
def cnn_features(model, images: torch.Tensor, dataset: str, batch_size: int = 2000):
    """``(probabilities (N, 10), penultimate features (N, F))`` of images (uint8 or [0, 1]), on the CPU."""
    spec, params = model.spec, dict(model.named_parameters())
    hidden = classifiers._hidden(spec)
    last = f"fc{len(hidden)}"
    # the same network without its last layer: n_classes := width of the last hidden layer
    trunk = {k: v for k, v in params.items() if not k.startswith(last)}
    trunk_spec = {**spec, "hidden": hidden[:-1], "n_classes": hidden[-1]}
    dev = params[f"{last}.weight"].device
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        x = data.normalize(x if x.dtype == torch.uint8 else x.float() * 255.0, dataset).to(dev)
        f = torch.relu(classifiers.forward(trunk, x, trunk_spec))
        feats.append(f.cpu())
        probs.append(torch.nn.functional.linear(f, params[f"{last}.weight"], params[f"{last}.bias"]).softmax(-1).cpu())
    return torch.cat(probs), torch.cat(feats)


def judge(model, images: torch.Tensor, labels: torch.Tensor, dataset: str,
          real_features: torch.Tensor | None = None) -> dict:
    """Class consistency (%) of ``images`` generated for ``labels``, and their feature FD to ``real_features``."""
    probs, feats = cnn_features(model, images, dataset)
    out = {"class_consistency": 100.0 * (probs.argmax(1) == torch.as_tensor(labels)).float().mean().item()}
    if real_features is not None:
        out["feature_fd"] = frechet_distance(feats, real_features)
    return out


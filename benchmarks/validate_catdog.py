"""Notebook 04's pipeline on the validation split, to choose settings without the judge or the test set.

    python benchmarks/validate_catdog.py                                  # the default settings
    python benchmarks/validate_catdog.py ae_epochs=8 den_steps=4000 den_attention=False
    python benchmarks/validate_catdog.py grid="[5.0, 6.0, 7.0, 8.0]" --out /tmp/validation.jsonl
    python benchmarks/validate_catdog.py --preset smoke              # a quick check that it runs

Builds (or loads from ``artifacts/``, keyed by their settings) what notebook 04 builds: the
autoencoder, its sharper decoder, the latent U-Net and the selector CNN, with the settings of
``--preset`` (default ``default``) and the ``key=value`` overrides given (Python literals). The selector is trained
on the training images minus a validation split of ``val_size`` images, as in the notebook. Then,
for each guidance weight of ``grid`` (default: the preset's ``guidance_sweep``), it generates the
notebook's evaluation set and reports, with the selector only:

- class consistency (%) and the Fréchet distance of the samples' selector features to the
  validation images', the two numbers the notebook's rule (``image_generation.choose_guidance``)
  picks w from, and the w it picks;
- the mean RMS distance of each sample to its nearest training image outside the split;
- the PSNR of both decoders on the validation images, the selector FD of their reconstructions of
  them (``recon_fd_val``), and the wall time of each piece.

The judge and the test images are never loaded. Appends one JSON line per call to ``--out``
(default ``benchmarks/results/validate_catdog.jsonl``). The records of these runs are in
``docs/research_notes/04_catdog.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_settings  # noqa: E402
from helpers import (adversarial, artifacts, config, data, diffusion, image_ae, image_eval,  # noqa: E402
                     image_generation, runtime)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="catdog settings as key=value; grid=[...] sets the w grid")
    parser.add_argument("--preset", default="default", choices=config.PRESET_NAMES)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "validate_catdog.jsonl")
    args = parser.parse_args(argv)
    over = parse_settings(args.overrides)
    grid = [float(w) for w in over.pop("grid", [])]
    cfg = config.get_config("catdog", args.preset, **over)
    grid = grid or list(cfg.guidance_sweep)
    device = runtime.setup(cfg.seed, needs="cifar10")

    x_train, y_train = data.load_tensors("catdog", "train")
    if cfg.n_train:  # the notebook's subset (smoke)
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.n_train]
        x_train, y_train = x_train[keep], y_train[keep]
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg.seed))
    val_idx, fit_idx = perm[:cfg.val_size], perm[cfg.val_size:]  # the notebook's split
    timers: dict = {}

    def timed(name, fn):
        with runtime.timer(name) as timers[name]:
            return fn()

    ae_first, _ = timed("autoencoder", lambda: image_ae.build_or_load_autoencoder(cfg, x_train, y_train, device=device))
    ae, _ = timed("sharper decoder", lambda: adversarial.build_or_load_sharp_autoencoder(cfg, ae_first, x_train,
                                                                                         device=device))
    x_val = x_train[val_idx]
    z_val = image_ae.encode_all(ae, x_val)
    recons = {name: image_ae.decode_all(model, z_val) for name, model in (("first stage", ae_first),
                                                                           ("sharper decoder", ae))}
    psnr = {name: -10 * math.log10(F.mse_loss(r, x_val.float() / 255).item()) for name, r in recons.items()}

    z_train = image_ae.encode_all(ae, x_train)
    scaler = diffusion.LatentStandardizer.fit(z_train)
    z_mirror = scaler.standardize(image_ae.encode_all(ae, x_train.flip(-1))) if cfg.den_flip else None
    ae_key = artifacts.config_key(image_ae.ae_config_key(cfg))
    denoiser, _ = timed("latent U-Net", lambda: image_generation.build_or_load_latent_denoiser(
        cfg, scaler.standardize(z_train), y_train, ae_key, device=device, z_std_mirrored=z_mirror))
    selector = timed("selector", lambda: image_generation.build_or_load_selector(cfg, x_train[fit_idx],
                                                                                 y_train[fit_idx], device=device))
    probs_val, feats_val = image_eval.predict(selector, x_val)
    recon_fd = {name: image_eval.frechet_distance(image_eval.predict(selector, r)[1], feats_val)
                for name, r in recons.items()}

    gen = image_generation.ImageGenerator(ae, denoiser, None, scaler, objective="flow", flow_method=cfg.flow_method,
                                          guidance_interval=cfg.guidance_interval)
    labels = torch.arange(2).repeat_interleave(cfg.n_eval_per_class)
    rows = {}
    with runtime.timer("sweep") as timers["sweep"]:
        for w in grid:
            images = gen.generate(labels, cfg.ddim_steps, w, seed=cfg.seed + 100)
            row = image_eval.evaluate_generated(selector, images, labels, feats_val)
            row["nn_dist"] = image_eval.nearest_neighbours(images, x_train[fit_idx])[0].mean().item()
            rows[w] = {k: round(v, 4) for k, v in row.items()}
            print(f"w {w:4.1f}: consistency {row['class_consistency']:5.1f} %  validation FD {row['feature_fd']:.3f}  "
                  f"NN distance {row['nn_dist']:.4f}", flush=True)
    wall = {name: round(t["seconds"], 1) for name, t in timers.items()}
    record = {"overrides": over, "grid": grid, "chosen_w": image_generation.choose_guidance(rows, cfg.guidance_target),
              "guidance_target": cfg.guidance_target, "psnr_val": {k: round(v, 2) for k, v in psnr.items()},
              "recon_fd_val": {k: round(v, 4) for k, v in recon_fd.items()},
              "selector_val_acc": round(100 * (probs_val.argmax(1) == y_train[val_idx]).float().mean().item(), 2),
              "rows": rows, "wall_seconds": wall}
    print(json.dumps(record, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


if __name__ == "__main__":
    main()

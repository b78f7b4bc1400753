"""How long notebook 04 would take in the `full` preset on this machine, from timed pieces.

    python benchmarks/estimate_full_catdog.py                  # full, and default as a check
    python benchmarks/estimate_full_catdog.py --threads 1 --out /tmp/estimate.json
    python benchmarks/estimate_full_catdog.py --presets default --before ae_epochs=12 den_steps=5000

Notebook 04's `full` settings (``config.CATDOG["full"]``: a [64, 128, 256] autoencoder
trained 60 epochs, judge and selector 30 epochs each, a width-128 U-Net trained 50,000
steps, 2,000 images per evaluation setting) are meant for a GPU. On a CPU they would
take many hours, so instead of running them this script times each costly piece with
the real code and the real model sizes on a small amount of work, and scales it:

- **autoencoder**: one epoch of ``image_ae.train_autoencoder`` on ``--n-images`` images,
  scaled to the training set and the preset's epochs;
- **sharper decoder**: a quarter of ``--den-steps`` steps of ``adversarial.finetune_decoder``,
  scaled to ``ae_adv_steps``;
- **judge and selector**: the same as the autoencoder with ``image_eval.train_classifier``;
- **denoiser**: ``--den-steps`` steps of the preset's denoiser objective (flow matching or
  DDPM) at its batch size, scaled to ``den_steps``;
- **sampling**: the denoiser's forward pass on a batch of 500 codes, per code, times the
  number of code evaluations the notebook makes (the evaluation set at every w of the
  guidance grid and at w = 1, ``ddim_steps`` each, two evaluations per step for
  classifier-free guidance: an upper bound).

t-SNE panels, decoding, the judge's scoring and the figures are left out: in
`default` they are about a tenth of the notebook. The same estimate is made for
`default` (``--presets``) so that it can be checked against the measured notebook time
(``results/default_timings.csv``). Writes a JSON result to ``--out`` (default
``benchmarks/results/estimate_full_catdog.json``).

With ``--before KEY=VALUE ...`` it compares instead: the first preset with those settings (for
example the values it held before a change) against the preset as it is, both estimated in each
of ``--rounds`` interleaved rounds in this one process, and prints the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import parse_settings  # noqa: E402
from helpers import (adversarial, artifacts, config, data, diffusion, image_ae, image_eval,  # noqa: E402
                     image_generation, runtime)

N_TRAIN = 10_000     # CIFAR-10 cats and dogs: 5,000 training images of each class
PIECES = ("autoencoder", "sharper_decoder", "judge", "selector", "denoiser", "sampling")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def estimate(preset: str, n_images: int, den_steps: int, overrides: dict | None = None) -> dict:
    """Timed pieces and the scaled estimate (seconds) of notebook 04 in ``preset`` (with ``overrides``)."""
    cfg = config.get_config("catdog", preset, **(overrides or {}))
    x, y = data.load_tensors("catdog", "train")
    x, y = x[:n_images], y[:n_images]
    n_train = cfg.n_train or N_TRAIN
    per_image_epoch = n_train / n_images
    out: dict = {"preset": preset}

    # 1. autoencoder: one epoch on n_images, scaled to n_train images x ae_epochs
    t = _timed(lambda: image_ae.train_autoencoder(
        x, y, cfg.ae_channels, cfg.latent_channels, 1, cfg.ae_batch_size, cfg.ae_lr, cfg.ae_w_cls,
        cfg.ae_w_center, cfg.ae_latent_noise, cfg.seed, w_l1=cfg.ae_w_l1, n_cab=cfg.ae_n_cab))
    out["autoencoder"] = t * per_image_epoch * cfg.ae_epochs

    # 1b. the sharper decoder (helpers.adversarial): adv_steps steps at its batch size, scaled to ae_adv_steps
    out["sharper_decoder"] = 0.0
    if cfg.get("ae_adv_steps"):
        ae = image_ae.ImageAutoencoder(cfg.ae_channels, cfg.latent_channels, 2, cfg.ae_n_cab)
        adv_steps = max(2, den_steps // 4)
        t = _timed(lambda: adversarial.finetune_decoder(
            ae, x, steps=adv_steps, batch_size=cfg.ae_adv_batch_size, warmup=0, d_width=cfg.ae_adv_width))
        out["sharper_decoder"] = t / adv_steps * cfg.ae_adv_steps

    # 2. judge and selector: one epoch each, scaled
    t = _timed(lambda: image_eval.train_classifier(x, y, cfg.clf_channels, 1, cfg.clf_batch_size,
                                                   cfg.clf_lr, blur=cfg.clf_blur))
    out["judge"] = t * per_image_epoch * cfg.clf_epochs
    t = _timed(lambda: image_eval.train_classifier(x, y, cfg.sel_channels, 1, cfg.clf_batch_size, cfg.clf_lr))
    out["selector"] = t * (n_train - cfg.val_size) / n_images * cfg.sel_epochs

    # 3. the denoiser: den_steps steps at its batch size, scaled
    shape = (cfg.latent_channels, 8, 8)
    codes = torch.randn(4 * cfg.den_batch_size, *shape)
    labels = torch.arange(len(codes)) % 2
    model = image_generation.make_denoiser(cfg, shape)
    kw = dict(cond=labels, p_uncond=cfg.den_p_uncond, ema_decay=cfg.den_ema, progress=False,
              generator=torch.Generator().manual_seed(0))
    if cfg.den_objective == "flow":
        t = _timed(lambda: diffusion.train_flow(model, codes, den_steps, cfg.den_batch_size, cfg.den_lr, **kw))
    else:
        sched = diffusion.NoiseSchedule.make(cfg.schedule, cfg.T)
        t = _timed(lambda: diffusion.train_diffusion(model, codes, sched, den_steps, cfg.den_batch_size,
                                                     cfg.den_lr, **kw))
    out["denoiser"] = t / den_steps * cfg.den_steps

    # 4. sampling: code evaluations x seconds per code evaluation
    model.eval()
    batch = torch.randn(500, *shape)
    with torch.no_grad():
        model(batch, torch.full((500,), 0.5), labels[:1].repeat(500))      # warm-up
        t = _timed(lambda: model(batch, torch.full((500,), 0.5), labels[:1].repeat(500)))
    per_code = t / 500
    n_eval = 2 * cfg.n_eval_per_class
    evaluations = n_eval * cfg.ddim_steps * len(set(cfg.guidance_sweep) | {1.0})
    out["sampling"] = 2 * evaluations * per_code
    out["sampling_code_evaluations"] = 2 * evaluations
    out["total"] = sum(out[k] for k in PIECES)
    return out


def compare(preset: str, before: dict, rounds: int, n_images: int, den_steps: int) -> dict:
    """``preset`` with the settings ``before`` against ``preset`` as it is: both estimated in each of ``rounds``
    interleaved rounds, in this process; medians of each piece and the ratio of the totals."""
    runs: dict = {"before": [], "now": []}
    for _ in range(rounds):
        for label, overrides in (("before", before), ("now", {})):
            runs[label].append(estimate(preset, n_images, den_steps, overrides))
    med = {label: {k: statistics.median(r[k] for r in rs) for k in (*PIECES, "total")} for label, rs in runs.items()}
    ratio = statistics.median(b["total"] / n["total"] for b, n in zip(runs["before"], runs["now"]))
    print(f"{preset} notebook 04, {rounds} interleaved rounds, median estimate: before {med['before']['total']:.0f} s, "
          f"now {med['now']['total']:.0f} s; before / now = {ratio:.2f}x")
    for k in PIECES:
        print(f"  {k:16s} before {med['before'][k]:7.1f} s   now {med['now'][k]:7.1f} s")
    return {"preset": preset, "before_settings": before, "rounds": rounds, "median_seconds": med,
            "before_over_now": ratio}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["default", "full"], choices=config.PRESET_NAMES)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: every free core)")
    ap.add_argument("--n-images", type=int, default=1000, help="images of the one timed epoch")
    ap.add_argument("--den-steps", type=int, default=40, help="timed denoiser steps")
    ap.add_argument("--out", type=str, default=None, help="JSON result path")
    ap.add_argument("--before", nargs="+", metavar="KEY=VALUE", default=None,
                    help="compare the first preset with these settings against it as it is, side by side")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the comparison (--before)")
    args = ap.parse_args(argv)
    runtime.keep_freed_memory()   # as runtime.setup does in the notebooks
    threads = runtime.setup_threads(args.threads)
    result = {"threads": threads, "n_images": args.n_images, "den_steps": args.den_steps, "estimates": {}}
    if args.before:
        result["comparison"] = compare(args.presets[0], parse_settings(args.before), args.rounds, args.n_images,
                                       args.den_steps)
        args.presets = []
    for preset in args.presets:
        est = estimate(preset, args.n_images, args.den_steps)
        result["estimates"][preset] = est
        parts = ", ".join(f"{k} {est[k] / 60:.1f}" for k in PIECES)
        print(f"{preset:8s} notebook 04 estimate: {est['total'] / 60:7.1f} min "
              f"({est['total'] / 3600:.1f} h; minutes: {parts}), {threads} thread(s)")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "estimate_full_catdog.json"
    print(f"wrote {artifacts.write_json(out, result)}")
    return result


if __name__ == "__main__":
    main()

"""Presets and paths: every knob of the series, as data, in one place.

A *preset* is a named set of settings for every notebook:

| preset    | what it is for                                                        |
|-----------|-----------------------------------------------------------------------|
| `smoke`   | tests: every notebook finishes in at most 60 s on a 2-core CPU        |
| `default` | `make run`: the whole series in at most 25 min on a 2-core CPU        |
| `full`    | the original projects' own settings (10 CNNs x 10 epochs, latent 512, ...)        |

The preset is chosen by, in this order: the `preset=` argument (a notebook's
`parameters` cell), the environment variable `LDT_PRESET`, then `"default"`.

The weight story (notebooks 01, 02, 03, 05) runs on one of three datasets,
chosen the same way: the ``dataset=`` argument (a notebook's ``DATASET``), the
environment variable ``LDT_DATASET``, then ``"mnist"``. Everything that differs
between datasets (architecture, thresholds, epochs, augmentation, labels, bars)
is data in :data:`WEIGHT_DATASETS`, laid over the presets by :func:`get_config`.

Each notebook reads one *section* (``zoo``, ``vae``, ...) with
:func:`get_config`, which returns a :class:`Config` (a dict with attribute
access) that a reader may override by keyword::

    cfg = get_config("zoo", preset="smoke", epochs=2)

Paths (all overridable by environment variables, nothing is created on import):

- data: ``$LDT_DATA_DIR`` or ``<repo>/data`` (see :mod:`helpers.data`)
- outputs root: ``$LDT_OUTPUT_DIR`` or ``<repo>``; under it ``figures/``,
  ``artifacts/`` (trained models and datasets, keyed by the config that made
  them) and ``runs/<timestamp>/`` (executed notebooks, ``metrics.csv``).
  Tests point ``LDT_OUTPUT_DIR`` at a temporary folder, so the committed
  ``figures/`` are only ever written by a real run.
"""

from __future__ import annotations

import copy
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

PRESET_NAMES = ("smoke", "default", "full")

# ---------------------------------------------------------------------------
# One block per notebook section. Each block maps preset -> settings.
# ---------------------------------------------------------------------------

# Notebook 00: setup and data.
SETUP = {
    "smoke": {"seed": 0, "datasets": ["mnist", "cifar10"], "n_show": 16},
    "default": {"seed": 0, "datasets": ["mnist", "fashion_mnist", "cifar10"], "n_show": 32},
    "full": {"seed": 0, "datasets": ["mnist", "fashion_mnist", "cifar10"], "n_show": 64},
}

# Notebook 01: a zoo of trained CNN classifiers (owned by notebook 01).
# Independent runs (trained together), aligned to run 0, then a trajectory of
# checkpoints per run; see helpers.weights.build_zoo for the meaning of each key.
_ZOO_COMMON: dict[str, Any] = {
    "seed": 0, "dataset": "mnist", "arch": "cnn", "spec": None,
    "batch_size": 128, "lr": 3e-3, "trajectory_lr": 3e-4, "augment_shift": 0,
    "align": True, "val_size": 5000, "train_subset": None, "test_subset": None,
    "interp_points": 11, "threads": None,  # None: every core (runtime.setup_threads)
    "scratch_steps": 300,  # steps of notebook 01's from-scratch training loop (not part of the zoo)
}
ZOO: dict[str, dict[str, Any]] = {
    "smoke": {**_ZOO_COMMON, "n_runs": 2, "epochs": 1, "trajectory_epochs": 0.5,
              "checkpoints_per_run": 10, "min_val_acc": 0.0, "train_subset": 8000,
              "test_subset": 2000, "interp_points": 5, "scratch_steps": 100},
    "default": {**_ZOO_COMMON, "n_runs": 4, "epochs": 5, "trajectory_epochs": 1,
                "checkpoints_per_run": 50, "min_val_acc": 97.5},
    "full": {**_ZOO_COMMON, "n_runs": 10, "epochs": 10, "trajectory_epochs": 1,
             "checkpoints_per_run": 30, "min_val_acc": 97.5},
}
# The many-seed zoo (weights.zoo_config(preset, "multiseed")): these keys are laid over the
# preset's ZOO settings (so the trajectory zoo's settings, and its artifact key, stay as above).
# n_runs independent networks (own init and data order) trained together with a one-cycle
# Adam rate (peak lr, linear warm-up for a `warmup` fraction, then linear decay: lr_schedule),
# the last checkpoints_per_run checkpoints kept, checkpoint_every steps apart; all aligned by
# weight matching to an iterated common reference (re-aligned to the running mean, at most
# align_iters rounds, until no assignment changes); barrier_pairs random pairs for the
# interpolation barrier. Recipe chosen on the validation split (benchmarks/bench_zoo_training.py).
_ZOO_MULTISEED_COMMON: dict[str, Any] = {
    "kind": "multiseed", "lr": 1e-2, "lr_schedule": "linear", "warmup": 0.05, "align_iters": 30,
}
ZOO_MULTISEED: dict[str, dict[str, Any]] = {
    "smoke": {**_ZOO_MULTISEED_COMMON, "n_runs": 8, "epochs": 1, "batch_size": 64,
              "checkpoints_per_run": 2, "checkpoint_every": 10, "min_val_acc": 0.0,
              "barrier_pairs": 8},
    "default": {**_ZOO_MULTISEED_COMMON, "n_runs": 64, "epochs": 0.5, "batch_size": 64,
                "checkpoints_per_run": 4, "checkpoint_every": 25, "min_val_acc": 96.5,
                "barrier_pairs": 32},
    "full": {**_ZOO_MULTISEED_COMMON, "n_runs": 128, "epochs": 2, "batch_size": 128,
             "checkpoints_per_run": 4, "checkpoint_every": 50, "min_val_acc": 97.5,
             "barrier_pairs": 64},
}
# The wide-accuracy zoo (weights.zoo_config(preset, "wide"); notebook 03's last section): laid
# over the preset's ZOO settings like ZOO_MULTISEED. n_runs networks trained together for `epochs`
# epochs (lr, lr_schedule, warmup as above), all from one initialisation if shared_init (they
# then differ only in their data order; align: weight-match each run to run 0, not needed then);
# a checkpoint of each at checkpoints_per_run steps spaced geometrically from step
# first_checkpoint (dense early, where accuracy rises fast); then at most per_bin checkpoints kept
# in each of n_bins equal bins of VALIDATION accuracy (on its first select_val_size images;
# None = all) over [acc_lo, acc_hi] % (weights.even_selection), so the accuracies are spread
# evenly; min_val_acc is not used.
_ZOO_WIDE_COMMON: dict[str, Any] = {
    "kind": "wide", "batch_size": 64, "lr": 3e-3, "lr_schedule": "linear", "warmup": 0.05,
    "first_checkpoint": 2, "acc_lo": 30.0, "acc_hi": 99.5, "select_val_size": 1000,
    "shared_init": True, "align": False,
}
ZOO_WIDE: dict[str, dict[str, Any]] = {
    "smoke": {**_ZOO_WIDE_COMMON, "n_runs": 2, "epochs": 0.5, "checkpoints_per_run": 24,
              "acc_lo": 20.0, "n_bins": 8, "per_bin": 4},
    "default": {**_ZOO_WIDE_COMMON, "n_runs": 8, "epochs": 1.5, "checkpoints_per_run": 200,
                "n_bins": 20, "per_bin": 16},
    "full": {**_ZOO_WIDE_COMMON, "n_runs": 16, "epochs": 3, "checkpoints_per_run": 300,
             "n_bins": 25, "per_bin": 32},
}

# Notebook 02: the parameter autoencoder / VAE (owned by notebook 02).
# latent_dim/hidden/n_layers: MLP encoder and decoder sizes; beta: KL weight (0 = plain AE);
# sigma_in/sigma_z: p-diff's noise augmentation on input and latent (training only);
# lr_step/lr_gamma: StepLR (multiply the learning rate by lr_gamma every lr_step epochs);
# n_eval: checkpoints decoded and evaluated on MNIST test (None = all); n_test: test images
# used (None = all 10,000); n_prior: networks sampled from the prior; permute_augment: must be 0
# (G.pt's permutation augmentation was removed: docs/research_notes/01_02_weights.md).
VAE: dict[str, dict[str, Any]] = {
    "smoke": {"seed": 0, "latent_dim": 16, "hidden": 128, "n_layers": 1, "beta": 1e-4,
              "sigma_in": 1e-3, "sigma_z": 0.1, "epochs": 50, "batch_size": 8, "lr": 1e-3,
              "weight_decay": 2e-6, "lr_step": 35, "lr_gamma": 0.3, "eval_every": 5,
              "n_eval": 16, "n_test": 2000, "n_prior": 8, "permute_augment": 0.0},
    "default": {"seed": 0, "latent_dim": 64, "hidden": 256, "n_layers": 2, "beta": 1e-4,
                "sigma_in": 1e-3, "sigma_z": 0.1, "epochs": 60, "batch_size": 32, "lr": 1e-3,
                "weight_decay": 2e-6, "lr_step": 25, "lr_gamma": 0.3, "eval_every": 5,
                "n_eval": None, "n_test": None, "n_prior": 32, "permute_augment": 0.0},
    "full": {"seed": 0, "latent_dim": 512, "hidden": 1024, "n_layers": 2, "beta": 1e-4,
             "sigma_in": 1e-3, "sigma_z": 0.1, "epochs": 100, "batch_size": 32, "lr": 1e-3,
             "weight_decay": 2e-6, "lr_step": 40, "lr_gamma": 0.3, "eval_every": 5,
             "n_eval": None, "n_test": None, "n_prior": 64, "permute_augment": 0.0},
}

# Notebook 03: latent diffusion over network weights (owned by notebook 03).
# schedule/T: noise schedule ("linear" or "cosine") and number of diffusion steps;
# hidden/n_blocks/time_dim/dropout: the MLPDenoiser; conditional: condition on the
# checkpoint's test accuracy (scalar, standardised), dropped with probability p_uncond
# (classifier-free guidance); train_steps/batch_size/lr/weight_decay/warmup_steps/
# lr_schedule/ema_decay: the trainer (ema_decay is an upper bound: diffusion.ema_decay_at warms the
# decay up as (1+k)/(10+k), which stays below 0.999 until step 8,990, so in `default` the warm-up,
# not ema_decay, sets the EMA; the same holds for den_ema and gen_ema below); ddim_steps/eta/clip_x0: the DDIM sampler (clip_x0
# bounds the predicted standardised latent, None = off); n_generated: networks sampled for
# the headline numbers; n_test: MNIST test images used (None = all 10,000);
# direct_*: the same diffusion on the normalised raw weight vectors (no autoencoder;
# direct_input_skip adds g(t) x_t to the denoiser's output, see helpers.denoisers);
# guidance: the classifier-free guidance weight w of the checks; gif_fps: the denoising GIF;
# prediction: what the latent denoiser outputs, "eps" (the noise) or "x0" (the clean latent, as in
# G.pt; helpers.diffusion.x0_loss and EpsFromX0).
WEIGHT_DIFFUSION: dict[str, dict[str, Any]] = {
    "smoke": {"seed": 0, "schedule": "linear", "T": 100, "hidden": 128, "n_blocks": 2,
              "time_dim": 32, "dropout": 0.0, "conditional": True, "p_uncond": 0.2,
              "train_steps": 300, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0,
              "warmup_steps": 20, "lr_schedule": "cosine", "ema_decay": 0.99,
              "ddim_steps": 10, "eta": 0.0, "clip_x0": 5.0, "n_generated": 8, "n_test": 2000,
              "direct_input_skip": True, "direct_hidden": 128, "direct_n_blocks": 1, "direct_train_steps": 100,
              "direct_lr": 1e-3, "guidance": 2.0, "gif_fps": 6, "prediction": "eps"},
    "default": {"seed": 0, "schedule": "linear", "T": 500, "hidden": 256, "n_blocks": 2,
                "time_dim": 64, "dropout": 0.0, "conditional": True, "p_uncond": 0.1,
                "train_steps": 3000, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.0,
                "warmup_steps": 100, "lr_schedule": "cosine", "ema_decay": 0.999,
                "ddim_steps": 50, "eta": 0.0, "clip_x0": 5.0, "n_generated": 20, "n_test": None,
                "direct_input_skip": True, "direct_hidden": 128, "direct_n_blocks": 2, "direct_train_steps": 1500,
                "direct_lr": 1e-3, "guidance": 2.0, "gif_fps": 8, "prediction": "eps"},
    "full": {"seed": 0, "schedule": "linear", "T": 500, "hidden": 512, "n_blocks": 4,
             "time_dim": 128, "dropout": 0.0, "conditional": True, "p_uncond": 0.1,
             "train_steps": 20000, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.0,
             "warmup_steps": 500, "lr_schedule": "cosine", "ema_decay": 0.9995,
             "ddim_steps": 50, "eta": 0.0, "clip_x0": 5.0, "n_generated": 20, "n_test": None,
             "direct_input_skip": True, "direct_hidden": 256, "direct_n_blocks": 3, "direct_train_steps": 5000,
             "direct_lr": 1e-3, "guidance": 2.0, "gif_fps": 8, "prediction": "eps"},
}

# Notebook 03, last section: accuracy conditioning over the wide-accuracy zoo (ZOO_WIDE).
# zoo/vae/diffusion: overrides laid over weights.zoo_config(preset, "wide") and the preset's VAE
# and WEIGHT_DIFFUSION sections (generation.wide_conditioning_configs); condition: what the
# denoiser is conditioned on ("decoded_val_acc": validation accuracy of each checkpoint as the VAE
# reconstructs it; "val_acc": of the checkpoint itself; validation, so that achieved test accuracy
# is an honest check; "test_acc"); n_targets requested accuracies evenly spaced between the
# target_quantiles of that column, n_per_target networks each, DDIM with ddim_steps; the guidance
# weight is the one of guidance_sweep with the best R^2 about the identity line measured on the
# validation split; n_test: test images for the achieved accuracy (None = all 10,000);
# run: False skips the study (per dataset in WEIGHT_DATASETS: CIFAR-10's budget in default and full).
_WIDE_CONDITIONING_COMMON: dict[str, Any] = {
    "seed": 0, "run": True, "zoo": {}, "vae": {}, "diffusion": {}, "condition": "decoded_val_acc",
    "n_targets": 10, "target_quantiles": [0.05, 0.95], "n_per_target": 8, "ddim_steps": 50,
    "guidance_sweep": [1.0, 2.0, 3.0, 4.0], "n_test": None,
}
WIDE_CONDITIONING: dict[str, dict[str, Any]] = {
    "smoke": {**_WIDE_CONDITIONING_COMMON, "diffusion": {"train_steps": 200},
              "n_targets": 4, "n_per_target": 2, "ddim_steps": 10, "guidance_sweep": [1.0, 2.0],
              "n_test": 2000},
    "default": dict(_WIDE_CONDITIONING_COMMON),
    "full": dict(_WIDE_CONDITIONING_COMMON),
}

# Notebook 04: class-conditional latent diffusion of CIFAR-10 cats and dogs.
# ae_*: the image autoencoder (helpers.image_ae): code (latent_channels, 8, 8), ae_n_cab CABs at 8x8,
# ae_w_l1 an L1 pixel term beside the MSE; ae_adv_*: its second stage (helpers.adversarial), the decoder
# fine-tuned for ae_adv_steps against a patch discriminator ae_adv_width wide (adaptive weight
# ae_adv_weight after ae_adv_warmup steps; 0 steps = off); clf_*: the judge (helpers.image_eval);
# val_size/sel_*: the selector, trained on the training images minus val_size held out, which chooses
# the guidance weight from guidance_sweep (helpers.image_generation.choose_guidance: the lowest
# validation FD among the w whose selector class consistency reaches guidance_target %);
# den_*: the latent U-Net (den_objective "flow": rectified flow sampled with flow_method Euler/Heun,
# "ddpm": noise prediction sampled with DDIM (T, schedule, eta); den_flip: also learn the codes of the
# mirrored images); ddim_steps: sampler steps; guidance_interval (lo, hi): guidance only at noise
# levels t in [lo, hi] (t = 1 pure noise); gif_frames: at most that many frames of a run in the GIFs
# and the slider. How these values were chosen: docs/research_notes/04_catdog.md.
# n_train None = all 10,000 training images.
_CATDOG_DEFAULT: dict[str, Any] = {
    "seed": 0, "n_train": None,
    "ae_channels": [16, 32, 64], "latent_channels": 8, "ae_n_cab": 1,
    "ae_epochs": 12, "ae_batch_size": 64, "ae_lr": 2e-3, "ae_w_cls": 0.1, "ae_w_center": 0.05,
    "ae_latent_noise": 0.1, "ae_w_l1": 1.0,
    "ae_adv_steps": 1000, "ae_adv_batch_size": 64, "ae_adv_lr": 2e-4, "ae_adv_weight": 0.5, "ae_adv_warmup": 100,
    "ae_adv_width": 32,
    "clf_channels": [16, 32, 64], "clf_epochs": 14, "clf_batch_size": 128, "clf_lr": 3e-3,
    "clf_blur": 0.5,
    "val_size": 1000, "sel_channels": [16, 32, 64], "sel_epochs": 8, "guidance_target": 90.0,
    "den_objective": "flow", "flow_method": "euler", "den_width": 32, "den_mults": [1, 2], "den_res": 1,
    "den_attention": True, "den_time_dim": 64, "den_steps": 5000,
    "den_batch_size": 64, "den_lr": 2e-3, "den_ema": 0.999, "den_p_uncond": 0.1, "den_flip": True,
    "T": 1000, "schedule": "cosine",
    "ddim_steps": 50, "eta": 1.0, "n_eval_per_class": 250, "guidance_interval": [0.1, 0.8],
    "guidance_sweep": [6.0, 7.0, 8.0],
    "tsne_points": 600, "n_show": 16, "gif_fps": 8, "gif_frames": 26,
}
CATDOG: dict[str, dict[str, Any]] = {
    "smoke": {**_CATDOG_DEFAULT, "n_train": 1000, "ae_channels": [8, 16, 32], "ae_epochs": 1,
              "ae_adv_steps": 20, "ae_adv_warmup": 5, "ae_adv_width": 16,
              "clf_channels": [8, 16, 32], "clf_epochs": 1, "val_size": 200, "sel_channels": [8, 16, 16],
              "sel_epochs": 1, "den_width": 16, "den_steps": 100, "T": 200, "ddim_steps": 5,
              "n_eval_per_class": 50, "guidance_sweep": [1.0, 3.0], "tsne_points": 200, "n_show": 8},
    "default": dict(_CATDOG_DEFAULT),
    "full": {**_CATDOG_DEFAULT, "ae_channels": [64, 128, 256], "ae_n_cab": 2, "ae_epochs": 60,
             "ae_adv_steps": 5000, "ae_adv_width": 64,
             "clf_channels": [32, 64, 128], "clf_epochs": 30, "sel_channels": [32, 64, 128], "sel_epochs": 30,
             "den_width": 128, "den_res": 2, "den_steps": 50000, "den_ema": 0.9995, "ddim_steps": 50,
             "n_eval_per_class": 1000, "guidance_sweep": [4.0, 6.0, 7.0, 8.0, 10.0], "tsne_points": 2000},
}

# Notebook 05: evaluation of generated networks (owned by notebook 05).
# zoo/vae/weight_diffusion_preset: which preset of notebooks 01-03 made the artifacts evaluated;
# dataset: the zoo's dataset ("mnist", "fashion_mnist", "cifar10"), passed to the ZOO config;
# n_generated: networks per method (generated and every baseline); n_test: test images (None = all);
# noise_sigma: checkpoint + N(0, sigma^2) in normalised units (memorisation study: 0.06-0.12);
# soup_size: checkpoints averaged per soup; finetune_lr/finetune_batch: the Adam steps of the frontier's
# fine-tuning at equal budget.
# frontier_*: section 4, the accuracy-novelty frontier of both zoos (weights.zoo_config kinds in
# frontier_zoos): the noise baseline swept over frontier_sigmas and the soup over frontier_soup_sizes,
# frontier_n networks per point; n_fresh networks trained from new seeds (the independent-training
# reference); frontier_latent_scales: the latent-noise baseline (a training latent + N(0, s^2), decoded by
# the zoo's VAE) swept over s, standardised latent units; frontier_finetune_steps Adam steps given alike
# to generated and noise networks (ablation);
# multiseed_prediction / multiseed_eta / multiseed_clip_x0: what the many-seed zoo's latent denoiser
# predicts ("x0" or "eps", laid over WEIGHT_DIFFUSION for that zoo only) and its DDIM sampler, chosen
# on the validation split by the mean frontier margin over 3 sampling seeds (docs/research_notes/05_evaluation.md:
# x0, eta 1, clip 1.0 gave +0.26, and +0.24 with a second denoiser seed; eps, eta 1, clip 5 -0.24).
_EVALUATION_DEFAULT: dict[str, Any] = {
    "seed": 0, "zoo_preset": "default", "vae_preset": "default",
    "weight_diffusion_preset": "default", "dataset": "mnist", "n_generated": 20,
    "n_test": None, "noise_sigma": 0.1, "soup_size": 16,
    "finetune_lr": 1e-3, "finetune_batch": 128,
    "frontier_zoos": ["trajectory", "multiseed"],
    "frontier_sigmas": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
    "frontier_soup_sizes": [2, 4, 8, 16], "frontier_n": 20, "n_fresh": 4,
    "frontier_latent_scales": [0.2, 0.4, 0.7, 1.0], "frontier_finetune_steps": 50,
    "multiseed_prediction": "x0", "multiseed_eta": 1.0, "multiseed_clip_x0": 1.0,
}
EVALUATION: dict[str, dict[str, Any]] = {
    "smoke": {"seed": 0, "zoo_preset": "smoke", "vae_preset": "smoke",
              "weight_diffusion_preset": "smoke", "dataset": "mnist", "n_generated": 8,
              "n_test": 2000, "noise_sigma": 0.1, "soup_size": 16, "finetune_lr": 1e-3, "finetune_batch": 128,
              "frontier_zoos": ["trajectory", "multiseed"], "frontier_sigmas": [0.05, 0.2, 0.5],
              "frontier_soup_sizes": [2, 8], "frontier_n": 6, "n_fresh": 2,
              "frontier_latent_scales": [0.4, 1.0], "frontier_finetune_steps": 5,
              "multiseed_prediction": "x0", "multiseed_eta": 1.0, "multiseed_clip_x0": 1.0},
    "default": dict(_EVALUATION_DEFAULT),
    "full": {**_EVALUATION_DEFAULT, "zoo_preset": "full", "vae_preset": "full",
             "weight_diffusion_preset": "full", "n_fresh": 8},
}

# Notebook 06: the smallest latent generative model of MNIST / Fashion-MNIST (owned by notebook 06).
# val_size: training images held out as the validation split (settings are chosen on it, never
# on the test set); n_train: training images used (None = all but val_size); n_test: the first
# n_test test images (None = all 10,000);
# vae_*: helpers.digit_models.DigitVAE (latent size, conv widths, epochs, batch, lr, KL weight
# beta, weight of the linear class head on mu: 0 = unsupervised);
# gen_*: the latent generators (size one of digit_models.GENERATOR_SIZES; steps, batch, lr, EMA,
# label-drop probability for guidance), T/schedule: the DDPM's;
# sample_steps/sample_method: the flow sampler (Euler or Heun), ddim_steps: the DDPM's;
# guidance_grid / guidance_target / n_select_per_class: guidance chosen on validation codes without
# the judge (notebook 06's choose_guidance: lowest latent class-FD among the w whose selector, the
# VAE's latent class head, assigns >= guidance_target % of the generated codes to their class);
# n_eval_per_class: generated digits per class judged; quality_steps: the steps sweep;
# bayes_n_noise: noise samples tried for the denoising estimators, n_bayes_val: validation images
# for choosing the estimator, ode_steps/ode_probes/n_ode: the flow ODE likelihood (Heun steps,
# Hutchinson probes, images); judge_*/cnn_*: classifiers.py specs, epochs and random-shift
# augmentation (pixels) of the judge and of the discriminative baseline (cnn_shift 0 chosen on
# validation: Fashion 87.6 % vs 84.1 % with shift 2, MNIST 98.40 vs 98.32); fashion: also run
# Fashion-MNIST.
_DIGITS_DEFAULT: dict[str, Any] = {
    "seed": 0, "val_size": 5000, "n_train": None, "n_test": None,
    "vae_latent": 16, "vae_channels": [16, 32], "vae_epochs": 3, "vae_batch_size": 128,
    "vae_lr": 3e-3, "vae_beta": 0.5, "vae_w_cls": 100.0,
    "gen_size": "small", "gen_steps": 3000, "gen_batch_size": 256, "gen_lr": 3e-3,
    "gen_ema": 0.999, "gen_p_uncond": 0.1, "T": 1000, "schedule": "cosine",
    "sample_steps": 20, "sample_method": "heun", "ddim_steps": 20,
    "guidance_grid": [1.0, 1.5, 2.0, 3.0, 4.0], "guidance_target": 99.0, "n_select_per_class": 200,
    "n_eval_per_class": 200, "quality_steps": [1, 2, 5, 10, 20, 50],
    "bayes_n_noise": [4, 8, 16, 32], "n_bayes_val": 2000,
    "ode_steps": 8, "ode_probes": 1, "n_ode": 500,
    "judge_spec": {"channels": [32, 64], "hidden": [128]}, "judge_epochs": 3, "judge_shift": 2,
    "cnn_spec": {"channels": [16, 32], "hidden": [64]}, "cnn_epochs": 3, "cnn_shift": 0,
    "fashion": True, "gif_fps": 6,
}
DIGITS: dict[str, dict[str, Any]] = {
    "smoke": {**_DIGITS_DEFAULT, "val_size": 1000, "n_train": 8000, "n_test": 2000, "vae_epochs": 3,
              "gen_steps": 400, "guidance_grid": [1.0, 3.0],
              "n_select_per_class": 30, "n_eval_per_class": 30, "quality_steps": [1, 5, 20],
              "bayes_n_noise": [4, 8], "n_bayes_val": 300, "n_ode": 100,
              "judge_epochs": 1, "cnn_epochs": 1, "fashion": True},
    "default": dict(_DIGITS_DEFAULT),
    "full": {**_DIGITS_DEFAULT, "vae_epochs": 10, "gen_steps": 20000, "n_eval_per_class": 500,
             "quality_steps": [1, 2, 5, 10, 20, 50], "bayes_n_noise": [4, 8, 16, 32, 64],
             "n_bayes_val": 5000, "n_ode": 2000, "judge_epochs": 8, "cnn_epochs": 8},
}

SECTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "setup": SETUP,
    "zoo": ZOO,
    "vae": VAE,
    "weight_diffusion": WEIGHT_DIFFUSION,
    "catdog": CATDOG,
    "evaluation": EVALUATION,
    "digits": DIGITS,
    "wide_conditioning": WIDE_CONDITIONING,
}


# ---------------------------------------------------------------------------
# The weight story's datasets: per-dataset settings laid over the presets above.
# ---------------------------------------------------------------------------

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
# Sections whose settings depend on the dataset (get_config lays WEIGHT_DATASETS over them).
DATASET_SECTIONS = ("setup", "zoo", "vae", "weight_diffusion", "evaluation", "wide_conditioning")

# One entry per dataset: label (plots, tables), acc_bar (the "> X %" bar of the summaries,
# metric generated_frac_above_<bar>), then per section (and "zoo_multiseed", laid over
# ZOO_MULTISEED by weights.zoo_config) per preset the settings that differ from the presets
# above. MNIST has none: its settings, numbers and artifact keys are the presets' own.
# Fashion-MNIST: the MNIST CNN and recipe; only the accuracy thresholds follow the data
# (validation accuracy of default's checkpoints, min_val_acc 0: trajectory zoo 87.8-89.4 %,
# many-seed zoo 82.3-85.5 %, median 84.0 %; MNIST's: about 98.5 % and 97.6 %).
# CIFAR-10: the original project's recipe (a tiny CNN, random flips, 4-px padded crops and colour jitter on
# tensors, helpers.data.augment_images), sized for this CPU: conv 5x5/2 (3 -> 8), conv 3x3/2
# (8 -> 16), fc 576 -> 16 -> 10, 11,178 weights (the MNIST CNN has 11,250), about 168k
# multiply-adds per image (a 15,170-weight variant with 16/32 channels was ~3x slower per epoch
# and no better on validation). Thresholds from validation accuracies: 4 networks after 8
# epochs 52.3-55.5 % (10 epochs: 53.4-57.0 %), so min_val_acc 50 keeps every trajectory
# checkpoint; the many-seed recipe (1 epoch, one-cycle) gave 41.8-46.3 %, so 40.
_CIFAR_SPEC: dict[str, Any] = {"arch": "cnn", "in_channels": 3, "image_size": 32, "channels": [8, 16],
                               "kernel_size": [5, 3], "stride": 2, "pool": False, "hidden": [16],
                               "n_classes": 10}
_CIFAR_AUGMENT: dict[str, Any] = {"flip": True, "crop_padding": 4, "brightness": 0.2,
                                  "contrast": 0.2, "saturation": 0.2}
WEIGHT_DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"label": "MNIST", "acc_bar": 95.0},
    "fashion_mnist": {
        "label": "Fashion-MNIST", "acc_bar": 85.0,
        "setup": {"smoke": {"datasets": ["mnist", "fashion_mnist", "cifar10"]}},
        "zoo": {"default": {"min_val_acc": 87.5}, "full": {"min_val_acc": 87.5}},
        "zoo_multiseed": {"default": {"min_val_acc": 83.0}, "full": {"min_val_acc": 84.0}},
    },
    "cifar10": {
        "label": "CIFAR-10", "acc_bar": 50.0,
        "zoo": {"smoke": {"spec": _CIFAR_SPEC, "augment": _CIFAR_AUGMENT, "train_subset": 4000},
                "default": {"spec": _CIFAR_SPEC, "augment": _CIFAR_AUGMENT, "epochs": 8, "min_val_acc": 50.0},
                "full": {"spec": _CIFAR_SPEC, "augment": _CIFAR_AUGMENT, "epochs": 20, "min_val_acc": 55.0}},
        # the many-seed zoo: 16 networks x 1 epoch (a CIFAR-10 network-epoch costs ~3x MNIST's here)
        "zoo_multiseed": {"default": {"n_runs": 16, "epochs": 1, "min_val_acc": 40.0, "barrier_pairs": 32},
                          "full": {"n_runs": 64, "epochs": 4, "min_val_acc": 45.0}},
        # notebook 03's wide-accuracy study is skipped: its zoo would cost ~3x MNIST's in default, and
        # smoke's few steps leave CIFAR-10 networks at 10-18 %, below the study's accuracy bins
        "wide_conditioning": {"smoke": {"run": False}, "default": {"run": False}, "full": {"run": False}},
    },
}


def current_dataset(dataset: str | None = None) -> str:
    """Resolve the weight story's dataset: argument, then ``$LDT_DATASET``, then ``"mnist"``."""
    return _resolve("dataset", dataset, DATASET_NAMES, "LDT_DATASET", "mnist")


def dataset_overrides(section: str, preset: str, dataset: str | None = None) -> dict[str, Any]:
    """The settings ``dataset`` changes in ``section`` (or "zoo_multiseed") of ``preset`` (a copy)."""
    entry = WEIGHT_DATASETS[current_dataset(dataset)]
    return copy.deepcopy(entry.get(section, {}).get(preset, {}))


def dataset_info(dataset: str | None = None) -> Config:
    """What notebooks show about a dataset: ``name``, ``label`` ("CIFAR-10"), ``acc_label``
    (the accuracy axis), ``acc_bar`` (the "> X %" bar) and ``tag``, the suffix of its metric
    and figure names ("" for MNIST, else ``_<dataset>``; see :func:`helpers.runs.metric_tag`)."""
    name = current_dataset(dataset)
    entry = WEIGHT_DATASETS[name]
    return Config({"name": name, "label": entry["label"], "acc_label": f"{entry['label']} test accuracy (%)",
                   "acc_bar": float(entry["acc_bar"]), "tag": "" if name == "mnist" else f"_{name}"},
                  preset="-", section="dataset")


# ---------------------------------------------------------------------------
# Checking settings: environment variables and config values, where they are read.
# ---------------------------------------------------------------------------

class SettingError(ValueError):
    """A setting or environment variable holds a value it does not accept.

    The message is one line naming the setting, the value found and the values accepted.
    """


def env_int(name: str, minimum: int = 1, default: int | None = None) -> int | None:
    """The whole number in ``$name`` (at least ``minimum``), or ``default`` if unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise SettingError(f"{name}={text!r} is not accepted: expected a whole number >= {minimum}")
    return value


def env_choice(name: str, choices: Iterable[str], default: str | None = None) -> str | None:
    """The value of ``$name`` if it is one of ``choices``, or ``default`` if unset or empty."""
    choices = tuple(choices)
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if text not in choices:
        raise SettingError(f"{name}={text!r} is not accepted: expected one of {', '.join(choices)}")
    return text


def _kind(value: Any) -> str:
    """The type family of a preset value: bool, int, float, str, list, dict (or its type name)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    return type(value).__name__


def _fits(value: Any, kinds: set[str]) -> bool:
    kind = _kind(value)
    return kind in kinds or (kind == "int" and "float" in kinds)   # 3 is a fine learning rate


def check_setting(section: str, key: str, value: Any) -> None:
    """Refuse ``value`` for ``section.key`` if the presets never hold a value of its type.

    The accepted types are those of the key's values in every preset: an int
    is accepted where a float is expected, None only where some preset has
    None, and a key that is None in every preset accepts anything. Lists are
    checked one level deep (``[16, "32"]`` is refused where channels go).
    """
    presets = SECTIONS[section]
    added = [d[section][p] for d in WEIGHT_DATASETS.values() for p in d.get(section, {})]
    examples = [presets[p][key] for p in presets if key in presets[p]]
    if not examples:
        examples = [a[key] for a in added if key in a]   # a key only some datasets have
    if not examples:
        raise KeyError(f"section {section!r} has no setting {key!r}")
    known = [v for v in examples if v is not None]
    if not known or (value is None and len(known) < len(examples)):
        return
    kinds = {_kind(v) for v in known}
    shown = ", ".join(sorted(kinds)) + (" or None" if len(known) < len(examples) else "")
    if value is None or not _fits(value, kinds):
        found = "None" if value is None else f"{_kind(value)} {value!r}"
        raise SettingError(f"setting {section}.{key} expects {shown} (as in the presets: "
                           f"{', '.join(repr(v) for v in examples)}), found {found}")
    if _kind(value) == "list":
        inner = {_kind(v) for example in known if _kind(example) == "list" for v in example}
        bad = [v for v in value if inner and not _fits(v, inner)]
        if bad:
            raise SettingError(f"setting {section}.{key} expects a list of {', '.join(sorted(inner))}, "
                               f"found {_kind(bad[0])} {bad[0]!r} in {value!r}")


class Config(dict):
    """A dict whose keys can also be read as attributes (``cfg.epochs``).

    It remembers the preset and section it came from, which are printed by
    :meth:`show` and kept out of the dict itself so that the dict is exactly
    the data that made an artifact (see :func:`helpers.artifacts.config_key`).
    """

    def __init__(self, *args, preset: str = "custom", section: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "section", section)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"config section {self.section!r} has no setting {name!r}; "
                f"it has: {', '.join(sorted(self))}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("section") in SECTIONS and name not in self:
            raise AttributeError(
                f"config section {self.section!r} has no setting {name!r} (a typo?); "
                f"it has: {', '.join(sorted(self))}")
        self[name] = value

    def __setitem__(self, name: str, value: Any) -> None:
        """A config made by :func:`get_config` refuses unknown keys and values of the wrong type."""
        section = self.__dict__.get("section")
        if section in SECTIONS:
            if name not in self:
                raise KeyError(f"config section {section!r} has no setting {name!r} (a typo?); "
                               f"it has: {', '.join(sorted(self))}")
            check_setting(section, name, value)
        super().__setitem__(name, value)

    def update(self, *args, **kwargs) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name: str, value: Any = None) -> Any:
        if name not in self:
            self[name] = value
        return self[name]

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo), preset=self.preset, section=self.section)

    def __copy__(self):
        return Config(dict(self), preset=self.preset, section=self.section)

    def __reduce__(self):
        return (_config_from, (dict(self), self.preset, self.section))

    def show(self, *keys: str) -> str:
        """Return (and print) a small table of the settings, for the top of a notebook.

        With ``keys``, only those settings are shown (the ones the notebook discusses);
        the others still apply and stay readable as ``cfg.<key>``."""
        unknown = [k for k in keys if k not in self]
        if unknown:
            raise KeyError(f"config section {self.section!r} has no setting(s) {unknown}")
        shown = {k: self[k] for k in keys} if keys else dict(self)
        width = max((len(k) for k in shown), default=0)
        lines = [SMOKE_NOTE] if self.preset == "smoke" else []
        lines += [f"preset: {self.preset}    section: {self.section}"]
        lines += [f"  {k:<{width}} = {v!r}" for k, v in shown.items()]
        if keys and len(shown) < len(self):
            lines.append(f"  (+{len(self) - len(shown)} more settings: cfg.show() lists them all)")
        text = "\n".join(lines)
        print(text)
        return text


def _config_from(values: dict, preset: str, section: str) -> Config:
    """Rebuild a pickled :class:`Config` (its checks need ``section`` before the items)."""
    return Config(values, preset=preset, section=section)


def _resolve(what: str, value: str | None, names, env: str, default: str) -> str:
    """``value`` if given (it must be one of ``names``), else ``$env`` (checked), else ``default``."""
    if value:
        if value not in names:
            raise SettingError(f"unknown {what} {value!r}: expected one of {', '.join(names)}")
        return value
    return env_choice(env, names, default=default)


def current_preset(preset: str | None = None) -> str:
    """Resolve the preset name: argument, then ``$LDT_PRESET``, then ``"default"``."""
    return _resolve("preset", preset, PRESET_NAMES, "LDT_PRESET", "default")


def get_config(section: str, preset: str | None = None, **overrides: Any) -> Config:
    """Settings of one notebook section in one preset, with keyword overrides.

    An override of a key the section does not have is an error (a typo would
    otherwise be silently ignored). For the weight story's sections
    (:data:`DATASET_SECTIONS`), ``dataset=`` (else ``$LDT_DATASET``, else "mnist")
    lays that dataset's :data:`WEIGHT_DATASETS` settings over the preset's and
    sets the section's ``dataset`` key, if it has one.
    """
    if section not in SECTIONS:
        raise KeyError(f"unknown config section {section!r}: expected one of {', '.join(SECTIONS)}")
    name = current_preset(preset)
    values = copy.deepcopy(SECTIONS[section][name])
    if section in DATASET_SECTIONS:
        dataset = current_dataset(overrides.pop("dataset", None))
        values.update(dataset_overrides(section, name, dataset))
        if "dataset" in values:
            values["dataset"] = dataset
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(
            f"unknown setting(s) {unknown} for section {section!r}; it has: {', '.join(sorted(values))}"
        )
    for key, value in overrides.items():
        check_setting(section, key, value)
    values.update(overrides)
    _set_active_preset(name)
    return Config(values, preset=name, section=section)


# The preset a notebook runs in: the last one resolved by get_config in this
# process (a notebook's parameters cell passes PRESET to get_config). Metrics
# (helpers.runs.log_metric) and figures (helpers.plots.save_figure) are filed
# under it, so a notebook whose PRESET differs from $LDT_PRESET logs its own.
_ACTIVE_PRESET: str | None = None


def _set_active_preset(name: str | None) -> None:
    global _ACTIVE_PRESET
    _ACTIVE_PRESET = name


def active_preset(preset: str | None = None) -> str:
    """The preset numbers and figures belong to: ``preset``, else the one the last
    :func:`get_config` call in this process used, else :func:`current_preset`."""
    return current_preset(preset or _ACTIVE_PRESET)


SMOKE_NOTE = ("NOTE: smoke preset: a tiny budget that only proves the code runs; "
              "its numbers (accuracies, bars, sweeps) mean nothing. Use PRESET = \"default\" for results.")


# ---------------------------------------------------------------------------
# Paths. Functions, not constants, so environment variables set by a test or
# a notebook's parameters cell take effect.
# ---------------------------------------------------------------------------

def repo_root() -> Path:
    """The folder that holds ``helpers/`` and ``notebooks/``."""
    return Path(__file__).resolve().parent.parent


def output_dir() -> Path:
    """Root for everything a run writes: ``$LDT_OUTPUT_DIR`` or the repository."""
    return Path(os.environ.get("LDT_OUTPUT_DIR") or repo_root())


def figures_dir() -> Path:
    """The committed figures' folder, ``<output>/figures``: only the `default` preset
    writes here; other presets write to ``figures/<preset>/`` (see :func:`preset_figures_dir`)."""
    return output_dir() / "figures"


def preset_figures_dir(preset: str | None = None) -> Path:
    """Where the figures of a preset go: ``figures/`` for `default`, ``figures/<preset>/`` otherwise."""
    name = active_preset(preset)
    return figures_dir() if name == "default" else figures_dir() / name


def artifacts_dir() -> Path:
    """Trained models and datasets: ``$LDT_ARTIFACTS_DIR`` or ``<output>/artifacts``."""
    return Path(os.environ.get("LDT_ARTIFACTS_DIR") or output_dir() / "artifacts")


def runs_dir() -> Path:
    """Parent of the timestamped run folders (``<output>/runs``)."""
    return output_dir() / "runs"

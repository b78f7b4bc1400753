"""Presets, their allowed values and the paths: every knob of the series, as data, in one place.

A preset (``smoke``: tests; ``default``: ``make run``; ``full``: the original projects' settings) comes from
``preset=``, else ``$LDT_PRESET``, else "default". ``get_config("zoo", preset="smoke", epochs=2)`` checks
every value against ``<SECTION>_RULES`` and ``<SECTION>_CROSS``. The ``LDT_*`` variables: see the README.
"""

from __future__ import annotations

import copy
import functools
import os
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Iterable, Mapping


class ShortError(Exception):
    """An error whose one-line message says it all: a notebook shows it without a traceback."""


class SettingError(ShortError, ValueError):
    """A setting or environment variable holds a value it does not accept (one line: what, found, allowed)."""


class DataError(ShortError, RuntimeError):
    """A dataset is missing, incomplete or not what it should be; the message names the file and the fix."""


class Rule:
    """What a setting accepts: a kind, a range [lo, hi] (``open_lo``: lo excluded), choices, an item rule."""

    def __init__(self, kind, lo=None, hi=None, choices=None, item=None, none=False, open_lo=False, length=None):
        self.kind, self.lo, self.hi, self.choices, self.item = kind, lo, hi, choices, item
        self.none, self.open_lo, self.length = none, open_lo, length

    def ok(self, v) -> bool:
        if v is None:
            return self.none
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind in ("int", "float"):
            if isinstance(v, bool) or not isinstance(v, (int, float) if self.kind == "float" else int):
                return False
            return v == v and (v > self.lo if self.open_lo else v >= self.lo) and v <= self.hi
        if self.kind == "str":
            return isinstance(v, str) and v in self.choices
        if self.kind == "list":
            return (isinstance(v, (list, tuple)) and len(v) >= 1 and (self.length is None or len(v) == self.length)
                    and all(self.item.ok(x) for x in v))
        return isinstance(v, Mapping)

    def __str__(self) -> str:
        if self.kind in ("int", "float"):
            text = f"{self.kind} in {'(' if self.open_lo else '['}{self.lo:g}, {self.hi:g}]"
        elif self.kind == "str":
            text = "str: one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "list":
            text = f"{'a list of ' + str(self.length) if self.length else 'a non-empty list'} of {self.item}"
        else:
            text = self.kind
        return text + (" or None" if self.none else "")


Int = functools.partial(Rule, "int")                                         # Int(lo, hi, none=False)
Num = functools.partial(Rule, "float")                                       # Num(lo, hi, none=False, open_lo=False)
One = lambda *choices: Rule("str", choices=choices)                          # noqa: E731  one of these strings
ListOf = lambda item, **kw: Rule("list", item=item, **kw)                    # noqa: E731  a non-empty list of item


SEED, BOOL, DICT = Int(0, 2**32 - 1), Rule("bool"), Rule("dict", none=True)
LR, EPOCHS, STEPS = Num(0, 10, open_lo=True), Num(0, 1e4, open_lo=True), Int(1, 10**7)
BATCH, WIDTH, FRAC, PCT = Int(1, 65536), Int(1, 65536), Num(0, 1), Num(0, 100)
EMA, N_TEST = Num(0, 0.99999), Int(1, 10000, none=True)
TRAIN_SIZE = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}

PRESET_NAMES = ("smoke", "default", "full")
_ACTIVE_PRESET: str | None = None      # the last preset get_config resolved: metrics and figures go under it

# --- One block per notebook section: preset -> settings, then each key's rule. ---

SETUP = {
    "smoke": {"seed": 0, "datasets": ["mnist", "cifar10"], "n_show": 16},
    "default": {"seed": 0, "datasets": ["mnist", "fashion_mnist", "cifar10"], "n_show": 32},
    "full": {"seed": 0, "datasets": ["mnist", "fashion_mnist", "cifar10"], "n_show": 64},
}
SETUP_RULES = {"seed": SEED, "datasets": ListOf(One("mnist", "fashion_mnist", "cifar10")), "n_show": Int(1, 1024)}

# Notebook 01: a zoo of trained CNN classifiers (helpers.weights.build_zoo).
_ZOO_COMMON: dict[str, Any] = {
    "seed": 0, "dataset": "mnist", "arch": "cnn", "spec": None, "batch_size": 128, "lr": 3e-3,
    "trajectory_lr": 3e-4, "augment_shift": 0, "align": True, "val_size": 5000, "train_subset": None,
    "test_subset": None, "interp_points": 11, "threads": None,  # None: every core (runtime.setup_threads)
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
ZOO_RULES = {
    "seed": SEED, "dataset": One("mnist", "fashion_mnist", "cifar10"), "arch": One("cnn", "mlp"), "spec": DICT,
    "batch_size": BATCH, "lr": LR, "trajectory_lr": LR, "augment_shift": Int(0, 8), "augment": DICT,
    "align": BOOL, "val_size": Int(1, 30000), "train_subset": Int(1, 60000, none=True), "test_subset": N_TEST,
    "interp_points": Int(2, 1001), "threads": Int(1, 1024, none=True), "n_runs": Int(1, 1024), "epochs": EPOCHS,
    "trajectory_epochs": Num(0, 1e4), "checkpoints_per_run": Int(1, 10**5), "min_val_acc": PCT,
    "scratch_steps": Int(1, 10**6),
}
ZOO_CROSS = [("train_subset", lambda c: (c["train_subset"] or 0) + c["val_size"] <= TRAIN_SIZE[c["dataset"]],
              "train_subset + val_size at most the training set (MNIST 60,000, CIFAR-10 50,000)")]
# The many-seed zoo (weights.zoo_config(preset, "multiseed")), laid over ZOO: n_runs independent networks.
_ZOO_MULTISEED_COMMON: dict[str, Any] = {
    "kind": "multiseed", "lr": 1e-2, "lr_schedule": "linear", "warmup": 0.05, "align_iters": 30,
}
ZOO_MULTISEED: dict[str, dict[str, Any]] = {
    "smoke": {**_ZOO_MULTISEED_COMMON, "n_runs": 8, "epochs": 1, "batch_size": 64, "checkpoints_per_run": 2,
              "checkpoint_every": 10, "min_val_acc": 0.0, "barrier_pairs": 8},
    "default": {**_ZOO_MULTISEED_COMMON, "n_runs": 64, "epochs": 0.5, "batch_size": 64,
                "checkpoints_per_run": 4, "checkpoint_every": 25, "min_val_acc": 96.5, "barrier_pairs": 32},
    "full": {**_ZOO_MULTISEED_COMMON, "n_runs": 128, "epochs": 2, "batch_size": 128,
             "checkpoints_per_run": 4, "checkpoint_every": 50, "min_val_acc": 97.5, "barrier_pairs": 64},
}
ZOO_MULTISEED_RULES = {
    "kind": One("multiseed"), "lr": LR, "lr_schedule": One("constant", "cosine", "linear"), "warmup": FRAC,
    "align_iters": Int(0, 1000), "n_runs": Int(1, 4096), "epochs": EPOCHS, "batch_size": BATCH,
    "checkpoints_per_run": Int(1, 10**5), "checkpoint_every": STEPS, "min_val_acc": PCT, "barrier_pairs": Int(0, 10**4),
}
# The wide-accuracy zoo (weights.zoo_config(preset, "wide")), laid over ZOO: at most per_bin checkpoints
# in each of n_bins validation-accuracy bins over [acc_lo, acc_hi] %.
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
ZOO_WIDE_RULES = {
    "kind": One("wide"), "batch_size": BATCH, "lr": LR, "lr_schedule": One("constant", "cosine", "linear"),
    "warmup": FRAC, "first_checkpoint": STEPS, "acc_lo": PCT, "acc_hi": PCT, "select_val_size": Int(1, 30000, none=True),
    "shared_init": BOOL, "align": BOOL, "n_runs": Int(1, 1024), "epochs": EPOCHS, "checkpoints_per_run": Int(1, 10**5),
    "n_bins": Int(1, 1000), "per_bin": Int(1, 10**4),
}
ZOO_WIDE_CROSS = [("acc_hi", lambda c: c["acc_lo"] < c["acc_hi"], "above acc_lo = {acc_lo}")]

# Notebook 02: the parameter VAE. beta: KL weight (0 = plain AE); sigma_in/sigma_z: p-diff's noise on
# input and latent (training only); permute_augment must be 0 (docs/research_notes/01_02_weights.md).
_VAE_DEFAULT: dict[str, Any] = {
    "seed": 0, "latent_dim": 64, "hidden": 256, "n_layers": 2, "beta": 1e-4, "sigma_in": 1e-3,
    "sigma_z": 0.1, "epochs": 60, "batch_size": 32, "lr": 1e-3, "weight_decay": 2e-6, "lr_step": 25,
    "lr_gamma": 0.3, "eval_every": 5, "n_eval": None, "n_test": None, "n_prior": 32, "permute_augment": 0.0,
}
VAE: dict[str, dict[str, Any]] = {
    "smoke": {**_VAE_DEFAULT, "latent_dim": 16, "hidden": 128, "n_layers": 1, "epochs": 50, "batch_size": 8,
              "lr_step": 35, "n_eval": 16, "n_test": 2000, "n_prior": 8},
    "default": dict(_VAE_DEFAULT),
    "full": {**_VAE_DEFAULT, "latent_dim": 512, "hidden": 1024, "epochs": 100, "lr_step": 40, "n_prior": 64},
}
VAE_RULES = {
    "seed": SEED, "latent_dim": WIDTH, "hidden": WIDTH, "n_layers": Int(1, 64), "beta": Num(0, 1e3),
    "sigma_in": Num(0, 10), "sigma_z": Num(0, 10), "epochs": EPOCHS, "batch_size": BATCH, "lr": LR,
    "weight_decay": Num(0, 1), "lr_step": Int(1, 10**5), "lr_gamma": Num(0, 1, open_lo=True), "eval_every": Int(1, 10**5),
    "n_eval": Int(1, 10**6, none=True), "n_test": N_TEST, "n_prior": Int(1, 10**5), "permute_augment": FRAC,
}

# Notebook 03: latent diffusion over network weights. p_uncond: label-drop probability (classifier-free
# guidance); ema_decay: an upper bound (diffusion.ema_decay_at); direct_*: the same on raw weight vectors.
_WEIGHT_DIFFUSION_DEFAULT: dict[str, Any] = {
    "seed": 0, "schedule": "linear", "T": 500, "hidden": 256, "n_blocks": 2, "time_dim": 64, "dropout": 0.0,
    "conditional": True, "p_uncond": 0.1, "train_steps": 3000, "batch_size": 128, "lr": 1e-3,
    "weight_decay": 0.0, "warmup_steps": 100, "lr_schedule": "cosine", "ema_decay": 0.999, "ddim_steps": 50,
    "eta": 0.0, "clip_x0": 5.0, "n_generated": 20, "n_test": None, "direct_input_skip": True,
    "direct_hidden": 128, "direct_n_blocks": 2, "direct_train_steps": 1500, "direct_lr": 1e-3,
    "guidance": 2.0, "gif_fps": 8, "prediction": "eps",
}
WEIGHT_DIFFUSION: dict[str, dict[str, Any]] = {
    "smoke": {**_WEIGHT_DIFFUSION_DEFAULT, "T": 100, "hidden": 128, "time_dim": 32, "p_uncond": 0.2,
              "train_steps": 300, "batch_size": 64, "warmup_steps": 20, "ema_decay": 0.99, "ddim_steps": 10,
              "n_generated": 8, "n_test": 2000, "direct_n_blocks": 1, "direct_train_steps": 100, "gif_fps": 6},
    "default": dict(_WEIGHT_DIFFUSION_DEFAULT),
    "full": {**_WEIGHT_DIFFUSION_DEFAULT, "hidden": 512, "n_blocks": 4, "time_dim": 128, "train_steps": 20000,
             "warmup_steps": 500, "ema_decay": 0.9995, "direct_hidden": 256, "direct_n_blocks": 3,
             "direct_train_steps": 5000},
}
WEIGHT_DIFFUSION_RULES = {
    "seed": SEED, "schedule": One("linear", "cosine"), "T": Int(2, 10**5), "hidden": WIDTH,
    "n_blocks": Int(1, 64), "time_dim": WIDTH, "dropout": Num(0, 0.99), "conditional": BOOL,
    "p_uncond": FRAC, "train_steps": STEPS, "batch_size": BATCH, "lr": LR, "weight_decay": Num(0, 1),
    "warmup_steps": Int(0, 10**7), "lr_schedule": One("constant", "cosine", "linear"), "ema_decay": EMA,
    "ddim_steps": Int(1, 10**5), "eta": Num(0, 1), "clip_x0": Num(0, 1e6, none=True, open_lo=True),
    "n_generated": Int(1, 10**5), "n_test": N_TEST, "direct_input_skip": BOOL, "direct_hidden": WIDTH,
    "direct_n_blocks": Int(1, 64), "direct_train_steps": STEPS, "direct_lr": LR, "guidance": Num(0, 100),
    "gif_fps": Num(0.1, 100), "prediction": One("eps", "x0"),
}
WEIGHT_DIFFUSION_CROSS = [("ddim_steps", lambda c: c["ddim_steps"] <= c["T"], "at most T = {T}"),
                          ("warmup_steps", lambda c: c["warmup_steps"] <= c["train_steps"], "at most train_steps = {train_steps}")]

# Notebook 03, last section: accuracy conditioning over the wide-accuracy zoo. zoo/vae/diffusion:
# overrides of those sections; run: False skips the study.
_WIDE_CONDITIONING_COMMON: dict[str, Any] = {
    "seed": 0, "run": True, "zoo": {}, "vae": {}, "diffusion": {}, "condition": "decoded_val_acc",
    "n_targets": 10, "target_quantiles": [0.05, 0.95], "n_per_target": 8, "ddim_steps": 50,
    "guidance_sweep": [1.0, 2.0, 3.0, 4.0], "n_test": None,
}
WIDE_CONDITIONING: dict[str, dict[str, Any]] = {
    "smoke": {**_WIDE_CONDITIONING_COMMON, "diffusion": {"train_steps": 200}, "n_targets": 4,
              "n_per_target": 2, "ddim_steps": 10, "guidance_sweep": [1.0, 2.0], "n_test": 2000},
    "default": dict(_WIDE_CONDITIONING_COMMON),
    "full": dict(_WIDE_CONDITIONING_COMMON),
}
WIDE_CONDITIONING_RULES = {
    "seed": SEED, "run": BOOL, "zoo": DICT, "vae": DICT, "diffusion": DICT,
    "condition": One("val_acc", "decoded_val_acc", "test_acc"), "n_targets": Int(1, 1000),
    "target_quantiles": ListOf(FRAC, length=2), "n_per_target": Int(1, 10**4), "ddim_steps": Int(1, 10**5),
    "guidance_sweep": ListOf(Num(0, 100)), "n_test": N_TEST,
}
WIDE_CONDITIONING_CROSS = [("target_quantiles", lambda c: c["target_quantiles"][0] < c["target_quantiles"][1],
                            "[low, high] with low < high")]

# Notebook 04: latent diffusion of CIFAR-10 cats and dogs. ae_*: the image autoencoder; clf_*: the judge;
# sel_*: the guidance selector; den_*: the latent U-Net (docs/research_notes/04_catdog.md).
_CATDOG_DEFAULT: dict[str, Any] = {
    "seed": 0, "n_train": None, "ae_channels": [16, 32, 64], "latent_channels": 8, "ae_n_cab": 1,
    "ae_epochs": 8, "ae_batch_size": 64, "ae_lr": 2e-3, "ae_w_cls": 0.1, "ae_w_center": 0.05,
    "ae_latent_noise": 0.1, "ae_w_l1": 1.0, "ae_adv_steps": 1000, "ae_adv_batch_size": 64,
    "ae_adv_lr": 2e-4, "ae_adv_weight": 0.5, "ae_adv_warmup": 100, "ae_adv_width": 32,
    "clf_channels": [16, 32, 64], "clf_epochs": 14, "clf_batch_size": 128, "clf_lr": 3e-3, "clf_blur": 0.5,
    "val_size": 1000, "sel_channels": [16, 32, 64], "sel_epochs": 8, "guidance_target": 92.0,
    "den_objective": "flow", "flow_method": "euler", "den_width": 32, "den_mults": [1, 2], "den_res": 1,
    "den_attention": False, "den_time_dim": 64, "den_steps": 4000, "den_batch_size": 64, "den_lr": 2e-3,
    "den_ema": 0.999, "den_p_uncond": 0.1, "den_flip": True, "T": 1000, "schedule": "cosine",
    "ddim_steps": 50, "eta": 1.0, "n_eval_per_class": 250, "guidance_interval": [0.1, 0.8],
    "guidance_sweep": [7.0, 8.0, 9.0], "tsne_points": 600, "n_show": 16, "gif_fps": 8, "gif_frames": 26,
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
             "den_width": 128, "den_res": 2, "den_attention": True, "den_steps": 50000, "den_ema": 0.9995,
             "ddim_steps": 50, "n_eval_per_class": 1000, "guidance_sweep": [4.0, 6.0, 7.0, 8.0, 10.0],
             "tsne_points": 2000},
}
CATDOG_RULES = {
    "seed": SEED, "n_train": Int(2, 10000, none=True), "ae_channels": ListOf(WIDTH),
    "latent_channels": Int(1, 1024), "ae_n_cab": Int(0, 16), "ae_epochs": EPOCHS, "ae_batch_size": BATCH,
    "ae_lr": LR, "ae_w_cls": Num(0, 1e3), "ae_w_center": Num(0, 1e3), "ae_latent_noise": Num(0, 10),
    "ae_w_l1": Num(0, 1e3), "ae_adv_steps": Int(0, 10**7), "ae_adv_batch_size": BATCH, "ae_adv_lr": LR,
    "ae_adv_weight": Num(0, 1e3), "ae_adv_warmup": Int(0, 10**7), "ae_adv_width": WIDTH,
    "clf_channels": ListOf(WIDTH), "clf_epochs": EPOCHS, "clf_batch_size": BATCH, "clf_lr": LR,
    "clf_blur": Num(0, 10), "val_size": Int(1, 5000), "sel_channels": ListOf(WIDTH), "sel_epochs": EPOCHS,
    "guidance_target": PCT, "den_objective": One("ddpm", "flow"), "flow_method": One("euler", "heun"),
    "den_width": WIDTH, "den_mults": ListOf(Int(1, 64)), "den_res": Int(1, 16), "den_attention": BOOL,
    "den_time_dim": WIDTH, "den_steps": STEPS, "den_batch_size": BATCH, "den_lr": LR, "den_ema": EMA,
    "den_p_uncond": FRAC, "den_flip": BOOL, "T": Int(2, 10**5), "schedule": One("linear", "cosine"),
    "ddim_steps": Int(1, 10**5), "eta": Num(0, 1), "n_eval_per_class": Int(1, 10**5),
    "guidance_interval": ListOf(FRAC, length=2, none=True), "guidance_sweep": ListOf(Num(0, 100)),
    "tsne_points": Int(2, 10**5), "n_show": Int(1, 1024), "gif_fps": Num(0.1, 100),
    "gif_frames": Int(2, 10**4),
}
CATDOG_CROSS = [("ddim_steps", lambda c: c["ddim_steps"] <= c["T"], "at most T = {T}"),
                ("val_size", lambda c: c["val_size"] < (c["n_train"] or 10000), "below n_train = {n_train}"),
                ("guidance_interval", lambda c: c["guidance_interval"] is None
                 or c["guidance_interval"][0] < c["guidance_interval"][1], "[low, high] with low < high")]

# Notebook 05: evaluation of generated networks. *_preset: which preset of 01-03 made the artifacts;
# frontier_*: the accuracy-novelty frontier (docs/research_notes/05_evaluation.md).
_EVALUATION_DEFAULT: dict[str, Any] = {
    "seed": 0, "zoo_preset": "default", "vae_preset": "default", "weight_diffusion_preset": "default",
    "dataset": "mnist", "n_generated": 20, "n_test": None, "noise_sigma": 0.1, "soup_size": 16,
    "finetune_lr": 1e-3, "finetune_batch": 128, "frontier_zoos": ["trajectory", "multiseed"],
    "frontier_sigmas": [0.02, 0.05, 0.1, 0.2, 0.3, 0.5], "frontier_soup_sizes": [2, 4, 8, 16],
    "frontier_n": 20, "n_fresh": 4, "frontier_latent_scales": [0.2, 0.4, 0.7, 1.0],
    "frontier_finetune_steps": 50, "multiseed_prediction": "x0", "multiseed_eta": 1.0,
    "multiseed_clip_x0": 1.0,
}
EVALUATION: dict[str, dict[str, Any]] = {
    "smoke": {**_EVALUATION_DEFAULT, "zoo_preset": "smoke", "vae_preset": "smoke",
              "weight_diffusion_preset": "smoke", "n_generated": 8, "n_test": 2000,
              "frontier_sigmas": [0.05, 0.2, 0.5], "frontier_soup_sizes": [2, 8], "frontier_n": 6, "n_fresh": 2,
              "frontier_latent_scales": [0.4, 1.0], "frontier_finetune_steps": 5},
    "default": dict(_EVALUATION_DEFAULT),
    "full": {**_EVALUATION_DEFAULT, "zoo_preset": "full", "vae_preset": "full",
             "weight_diffusion_preset": "full", "n_fresh": 8},
}
EVALUATION_RULES = {
    "seed": SEED, "zoo_preset": One(*PRESET_NAMES), "vae_preset": One(*PRESET_NAMES),
    "weight_diffusion_preset": One(*PRESET_NAMES), "dataset": One("mnist", "fashion_mnist", "cifar10"),
    "n_generated": Int(1, 10**5), "n_test": N_TEST, "noise_sigma": Num(0, 100), "soup_size": Int(1, 10**5),
    "finetune_lr": LR, "finetune_batch": BATCH,
    "frontier_zoos": ListOf(One("trajectory", "multiseed", "wide")), "frontier_sigmas": ListOf(Num(0, 100)),
    "frontier_soup_sizes": ListOf(Int(1, 10**5)), "frontier_n": Int(1, 10**5), "n_fresh": Int(0, 1024),
    "frontier_latent_scales": ListOf(Num(0, 100)), "frontier_finetune_steps": Int(0, 10**7),
    "multiseed_prediction": One("eps", "x0"), "multiseed_eta": Num(0, 1), "multiseed_clip_x0": Num(0, 1e6, none=True, open_lo=True),
}
EVALUATION_CROSS: list = []

# Notebook 06: the smallest latent generative model of MNIST / Fashion-MNIST; settings are chosen on
# the val_size validation split; bayes_*/ode_*: the Bayes-rule scores; fashion: also run Fashion-MNIST.
_DIGITS_DEFAULT: dict[str, Any] = {
    "seed": 0, "val_size": 5000, "n_train": None, "n_test": None, "vae_latent": 16,
    "vae_channels": [16, 32], "vae_epochs": 3, "vae_batch_size": 128, "vae_lr": 3e-3, "vae_beta": 0.5,
    "vae_w_cls": 100.0, "gen_size": "small", "gen_steps": 3000, "gen_batch_size": 256, "gen_lr": 3e-3,
    "gen_ema": 0.999, "gen_p_uncond": 0.1, "T": 1000, "schedule": "cosine", "sample_steps": 20,
    "sample_method": "heun", "ddim_steps": 20, "guidance_grid": [1.0, 1.5, 2.0, 3.0, 4.0],
    "guidance_target": 99.0, "n_select_per_class": 200, "n_eval_per_class": 200,
    "quality_steps": [1, 2, 5, 10, 20, 50], "bayes_n_noise": [4, 8, 16, 32], "n_bayes_val": 2000,
    "ode_steps": 8, "ode_probes": 1, "n_ode": 500, "judge_spec": {"channels": [32, 64], "hidden": [128]},
    "judge_epochs": 3, "judge_shift": 2, "cnn_spec": {"channels": [16, 32], "hidden": [64]},
    "cnn_epochs": 3, "cnn_shift": 0, "fashion": True, "gif_fps": 6,
}
DIGITS: dict[str, dict[str, Any]] = {
    "smoke": {**_DIGITS_DEFAULT, "val_size": 1000, "n_train": 8000, "n_test": 2000, "vae_epochs": 3,
              "gen_steps": 400, "guidance_grid": [1.0, 3.0], "n_select_per_class": 30,
              "n_eval_per_class": 30, "quality_steps": [1, 5, 20], "bayes_n_noise": [4, 8],
              "n_bayes_val": 300, "n_ode": 100, "judge_epochs": 1, "cnn_epochs": 1, "fashion": True},
    "default": dict(_DIGITS_DEFAULT),
    "full": {**_DIGITS_DEFAULT, "vae_epochs": 10, "gen_steps": 20000, "n_eval_per_class": 500,
             "quality_steps": [1, 2, 5, 10, 20, 50], "bayes_n_noise": [4, 8, 16, 32, 64],
             "n_bayes_val": 5000, "n_ode": 2000, "judge_epochs": 8, "cnn_epochs": 8},
}
DIGITS_RULES = {
    "seed": SEED, "val_size": Int(1, 30000), "n_train": Int(1, 60000, none=True), "n_test": N_TEST,
    "vae_latent": WIDTH, "vae_channels": ListOf(WIDTH), "vae_epochs": EPOCHS, "vae_batch_size": BATCH,
    "vae_lr": LR, "vae_beta": Num(0, 1e3), "vae_w_cls": Num(0, 1e4), "gen_size": One("tiny", "small"),
    "gen_steps": STEPS, "gen_batch_size": BATCH, "gen_lr": LR, "gen_ema": EMA, "gen_p_uncond": FRAC,
    "T": Int(2, 10**5), "schedule": One("linear", "cosine"), "sample_steps": Int(1, 10**4),
    "sample_method": One("euler", "heun"), "ddim_steps": Int(1, 10**5), "guidance_grid": ListOf(Num(0, 100)),
    "guidance_target": PCT, "n_select_per_class": Int(1, 10**5), "n_eval_per_class": Int(1, 10**5),
    "quality_steps": ListOf(Int(1, 10**4)), "bayes_n_noise": ListOf(Int(1, 10**4)),
    "n_bayes_val": Int(1, 30000), "ode_steps": Int(1, 10**4), "ode_probes": Int(1, 1000),
    "n_ode": Int(1, 10**5), "judge_spec": DICT, "judge_epochs": EPOCHS, "judge_shift": Int(0, 8),
    "cnn_spec": DICT, "cnn_epochs": EPOCHS, "cnn_shift": Int(0, 8), "fashion": BOOL, "gif_fps": Num(0.1, 100),
}
DIGITS_CROSS = [("ddim_steps", lambda c: c["ddim_steps"] <= c["T"], "at most T = {T}"),
                ("n_train", lambda c: (c["n_train"] or 0) + c["val_size"] <= 60000,
                 "n_train + val_size at most the 60,000 training images")]

RULES = {"setup": SETUP_RULES, "zoo": ZOO_RULES, "zoo_multiseed": ZOO_MULTISEED_RULES, "zoo_wide": ZOO_WIDE_RULES,
         "vae": VAE_RULES, "weight_diffusion": WEIGHT_DIFFUSION_RULES, "catdog": CATDOG_RULES,
         "evaluation": EVALUATION_RULES, "digits": DIGITS_RULES, "wide_conditioning": WIDE_CONDITIONING_RULES}
CROSS = {"zoo": ZOO_CROSS, "zoo_wide": ZOO_WIDE_CROSS, "weight_diffusion": WEIGHT_DIFFUSION_CROSS,
         "catdog": CATDOG_CROSS, "evaluation": EVALUATION_CROSS, "digits": DIGITS_CROSS,
         "wide_conditioning": WIDE_CONDITIONING_CROSS}

SECTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "setup": SETUP, "zoo": ZOO, "vae": VAE, "weight_diffusion": WEIGHT_DIFFUSION, "catdog": CATDOG,
    "evaluation": EVALUATION, "digits": DIGITS, "wide_conditioning": WIDE_CONDITIONING,
}


# --- The weight story's datasets: per-dataset settings laid over the presets above. ---

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
DATASET_SECTIONS = ("setup", "zoo", "vae", "weight_diffusion", "evaluation", "wide_conditioning")

# Per dataset: label, acc_bar (the "> X %" bar), then per section per preset the settings that differ.
_CIFAR_SPEC: dict[str, Any] = {"arch": "cnn", "in_channels": 3, "image_size": 32, "channels": [8, 16],
               "kernel_size": [5, 3], "stride": 2, "pool": False, "hidden": [16], "n_classes": 10}
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
        # a CIFAR-10 network-epoch costs ~3x MNIST's here
        "zoo_multiseed": {"default": {"n_runs": 16, "epochs": 1, "min_val_acc": 40.0, "barrier_pairs": 32},
                          "full": {"n_runs": 64, "epochs": 4, "min_val_acc": 45.0}},
        # notebook 03's wide-accuracy study is skipped: too costly, and smoke's networks fall below its bins
        "wide_conditioning": {"smoke": {"run": False}, "default": {"run": False}, "full": {"run": False}},
    },
}


def current_dataset(dataset: str | None = None) -> str:
    """Resolve the weight story's dataset: argument, then ``$LDT_DATASET``, then ``"mnist"``."""
    return _resolve("dataset", dataset, DATASET_NAMES, "LDT_DATASET", "mnist")


def dataset_overrides(section: str, preset: str, dataset: str | None = None) -> dict[str, Any]:
    """The settings ``dataset`` changes in ``section`` (or "zoo_multiseed") of ``preset`` (a copy)."""
    return copy.deepcopy(WEIGHT_DATASETS[current_dataset(dataset)].get(section, {}).get(preset, {}))


def dataset_info(dataset: str | None = None) -> Config:
    """What notebooks show about a dataset: name, label, acc_label, acc_bar and tag (metric and figure suffix)."""
    name = current_dataset(dataset)
    entry = WEIGHT_DATASETS[name]
    return Config({"name": name, "label": entry["label"], "acc_label": f"{entry['label']} test accuracy (%)",
                   "acc_bar": float(entry["acc_bar"]), "tag": "" if name == "mnist" else f"_{name}"},
                  preset="-", section="dataset")


# --- Checking settings and environment variables. ---

def env_int(name: str, minimum: int = 1, default: int | None = None, maximum: int | None = None) -> int | None:
    """The whole number in ``$name`` (``minimum``..``maximum``), or ``default`` if unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise SettingError(f"{name}={text!r} is not accepted: expected a whole number {allowed}")
    return value


def env_choice(name: str, choices: Iterable[str], default: str | None = None) -> str | None:
    """The value of ``$name`` if it is one of ``choices``, or ``default`` if unset or empty."""
    choices, text = tuple(choices), os.environ.get(name, "").strip()
    if text and text not in choices:
        raise SettingError(f"{name}={text!r} is not accepted: expected one of {', '.join(choices)}")
    return text or default


def max_threads() -> int:
    """The upper bound of ``LDT_NUM_THREADS``: 4 x the CPU cores (more only makes training slower)."""
    return 4 * (os.cpu_count() or 1)


def rules_of(section: str) -> tuple[dict, list]:
    """The rules and cross-checks of a section ("zoo (multiseed)": the zoo's with that kind's laid over)."""
    if section.startswith("zoo (") and section.endswith(")"):
        kind = section[5:-1]
        return {**ZOO_RULES, **RULES.get(f"zoo_{kind}", {})}, ZOO_CROSS + CROSS.get(f"zoo_{kind}", [])
    return RULES.get(section, {}), CROSS.get(section, [])


def check_config(section: str, values: Mapping[str, Any]) -> None:
    """Check every value of a section's settings against its rules, then the cross-checks."""
    rules, cross = rules_of(section)
    for key, value in values.items():
        rule = rules.get(key)
        if rule is not None and not rule.ok(value):
            raise SettingError(f"setting {section}.{key} expects {rule}, found {value!r}")
    for key, holds, allowed in cross:
        try:
            good = holds(values)
        except (KeyError, TypeError, IndexError, ValueError):
            continue            # a key the cross-check needs is absent (or None): nothing to compare
        if not good:
            raise SettingError(f"setting {section}.{key} expects {allowed.format(**values)}, found {values[key]!r}")


class Config(dict):
    """A dict with attribute access (``cfg.epochs``), its preset and section; checked when made and changed."""

    def __init__(self, *args, preset: str = "custom", section: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "preset", preset)
        object.__setattr__(self, "section", section)
        if rules_of(section)[0]:
            check_config(section, self)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config section {self.section!r} has no setting {name!r}; "
                                 f"it has: {', '.join(sorted(self))}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            self[name] = value
        except KeyError as exc:
            raise AttributeError(exc.args[0]) from None

    def __setitem__(self, name: str, value: Any) -> None:
        section = self.__dict__.get("section", "")
        if rules_of(section)[0]:
            if name not in self:
                raise KeyError(f"config section {section!r} has no setting {name!r} (a typo?); "
                               f"it has: {', '.join(sorted(self))}")
            check_config(section, {**self, name: value})
        super().__setitem__(name, value)

    def update(self, *args, **kwargs) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name: str, value: Any = None) -> Any:
        if name not in self:
            self[name] = value
        return self[name]

    def __reduce__(self):            # copy, deepcopy and pickle rebuild it through __init__, checked
        return functools.partial(Config, preset=self.preset, section=self.section), (dict(self),)

    def show(self, *keys: str) -> str:
        """Print (and return) a small table of the settings ``keys`` (all without keys)."""
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
    """Settings of one section in one preset (with ``dataset``'s laid over) and keyword overrides, checked."""
    install_short_errors()
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
        raise KeyError(f"unknown setting(s) {unknown} for section {section!r}; it has: {', '.join(sorted(values))}")
    cfg = Config({**values, **overrides}, preset=name, section=section)
    global _ACTIVE_PRESET
    _ACTIVE_PRESET = name
    return cfg


def active_preset(preset: str | None = None) -> str:
    """``preset``, else the one the last :func:`get_config` call used, else :func:`current_preset`."""
    return current_preset(preset or _ACTIVE_PRESET)


SMOKE_NOTE = ("NOTE: smoke preset: a tiny budget that only proves the code runs; "
              "its numbers (accuracies, bars, sweeps) mean nothing. Use PRESET = \"default\" for results.")


def install_short_errors() -> None:
    """Under IPython, show :class:`ShortError` as one line, no traceback (by get_config and setup, never on import)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "_ldt_short_errors", False):
        return

    def one_line(shell, etype, value, tb, tb_offset=None):
        shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])

    shell.set_custom_exc((ShortError,), one_line)
    shell._ldt_short_errors = True


# --- Paths: functions, not constants, so environment variables set later take effect. ---

def repo_root() -> Path:
    """The folder that holds ``helpers/`` and ``notebooks/``: where relative folders are taken from."""
    return Path(__file__).resolve().parent.parent


def absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute: a relative path is taken from the repository root (from any current folder)."""
    path = Path(path).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else repo_root() / path))


def env_path(name: str, default: str | os.PathLike) -> Path:
    """The folder in ``$name``, else ``default``, made :func:`absolute`."""
    return absolute(os.environ.get(name, "").strip() or default)


def data_dir(root=None) -> Path:
    """The data folder: ``root``, else ``$LDT_DATA_DIR``, else ``<repo>/data`` (see :mod:`helpers.data`)."""
    return absolute(root) if root is not None else env_path("LDT_DATA_DIR", "data")


def check_data(names: Iterable[str], root=None) -> None:
    """One DataError listing every dataset of ``names`` (catdog: cifar10) whose cache is missing, with the fix."""
    root = data_dir(root)
    wanted = dict.fromkeys("cifar10" if n == "catdog" else n for n in names)
    unknown = [n for n in wanted if n not in DATASET_NAMES]
    if unknown:
        raise DataError(f"unknown dataset {unknown[0]!r}; choose one of {', '.join(DATASET_NAMES)}, catdog")
    missing = [n for n in wanted if not all((root / n / f"{s}_{a}.npy").exists() for s in ("train", "test") for a in "xy")]
    if missing:
        raise DataError(f"data not prepared in {root}: {', '.join(missing)}. "
                        f"Fix: run python -m helpers.data prepare {' '.join(missing)}")


def output_dir() -> Path:
    """Root for everything a run writes: ``$LDT_OUTPUT_DIR`` or the repository."""
    return env_path("LDT_OUTPUT_DIR", repo_root())


def figures_dir() -> Path:
    """``<output>/figures``: only the `default` preset writes here (see :func:`preset_figures_dir`)."""
    return output_dir() / "figures"


def preset_figures_dir(preset: str | None = None) -> Path:
    """Where the figures of a preset go: ``figures/`` for `default`, ``figures/<preset>/`` otherwise."""
    name = active_preset(preset)
    return figures_dir() if name == "default" else figures_dir() / name


def artifacts_dir() -> Path:
    """Trained models and datasets: ``$LDT_ARTIFACTS_DIR`` or ``<output>/artifacts``."""
    return env_path("LDT_ARTIFACTS_DIR", output_dir() / "artifacts")


def new_run_dir(root: Path | None = None) -> Path:
    """Create and return a fresh ``<runs>/<YYYYmmdd-HHMMSS>[-k]`` folder (unique even when two runs start at once)."""
    base = (Path(root) if root else output_dir() / "runs") / time.strftime("%Y%m%d-%H%M%S")
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        with suppress(FileExistsError):    # another run took this name a moment ago: try the next
            path.mkdir()
            return path
    raise SettingError(f"no free run folder name under {base.parent}")


_RUN_DIR: dict[str, Path] = {}


def run_dir() -> Path:
    """The current run folder: ``$LDT_RUN_DIR`` (made if missing), else one made for this process."""
    if os.environ.get("LDT_RUN_DIR", "").strip():
        return check_writable(env_path("LDT_RUN_DIR", ""), "LDT_RUN_DIR")
    if "path" not in _RUN_DIR:
        _RUN_DIR["path"] = new_run_dir()
    return _RUN_DIR["path"]


def check_writable(folder: Path, what: str) -> Path:
    """Create ``folder`` if needed and prove it writable, or raise one SettingError naming ``what`` (the variable)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingError(f"{what} folder {folder} is not writable ({exc.strerror or exc}): "
                           f"expected a writable folder; set {what} to one") from None
    return folder


def check_environment() -> dict[str, Any]:
    """Check every ``LDT_*`` variable that needs no torch (preset, dataset, threads, progress, folders)."""
    return {"preset": current_preset(), "dataset": current_dataset(),
            "threads": env_int("LDT_NUM_THREADS", 1, maximum=max_threads()),
            "progress": env_choice("LDT_PROGRESS", ("0", "1"), default="1"), "data": data_dir(),
            "output": check_writable(output_dir(), "LDT_OUTPUT_DIR"),
            "artifacts": check_writable(artifacts_dir(), "LDT_ARTIFACTS_DIR")}

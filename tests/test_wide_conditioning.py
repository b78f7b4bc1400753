"""Tests of the wide-accuracy zoo and of accuracy conditioning over it (notebook 03's last section)."""

import pytest
import torch

from helpers import config, generation
from helpers import weights as W


def test_zoo_config_wide_keys_and_overrides():
    traj = W.zoo_config("smoke")
    wide = W.zoo_config("smoke", "wide", n_runs=3)
    assert wide["kind"] == "wide" and wide["n_runs"] == 3 and wide["dataset"] == traj["dataset"]
    for key in ("first_checkpoint", "acc_lo", "acc_hi", "n_bins", "per_bin", "select_val_size", "lr_schedule"):
        assert key in wide, key
    assert "wide" in W.ZOO_KINDS
    with pytest.raises(KeyError, match=r"unknown setting\(s\) \['n_bin'\] for the wide zoo"):
        W.zoo_config("smoke", "wide", n_bin=4)


def test_checkpoint_steps_geometric():
    assert W.checkpoint_steps(100, 5, 1) == [1, 3, 10, 32, 100]
    steps = W.checkpoint_steps(1000, 200, 2)
    assert steps[0] == 2 and steps[-1] == 1000 and steps == sorted(set(steps))
    assert steps[:5] == [2, 3, 4, 5, 6]          # dense early: every step
    with pytest.raises(ValueError, match="found total=10, n=3, first=20"):
        W.checkpoint_steps(10, 3, 20)


def test_even_selection_flattens_a_skewed_histogram():
    # 200 values crowded near 95, 20 spread over 50-90: the selection keeps <= 5 per bin
    g = torch.Generator().manual_seed(0)
    values = torch.cat([95 + torch.rand(200, generator=g) * 4, 50 + torch.rand(20, generator=g) * 40,
                        torch.tensor([10.0, 100.0])])
    keep = W.even_selection(values, 50, 99, n_bins=7, per_bin=5)
    kept = values[keep]
    counts = torch.histc(kept, bins=7, min=50, max=99)
    assert int(counts.max()) <= 5 and bool((kept >= 50).all() and (kept <= 99).all())
    before = torch.histc(values, bins=7, min=50, max=99)
    assert float(counts.std() / counts.mean()) < float(before.std() / before.mean())
    assert torch.equal(keep, W.even_selection(values, 50, 99, n_bins=7, per_bin=5))   # deterministic
    assert torch.equal(keep, torch.sort(keep).values)
    with pytest.raises(ValueError, match="expected lo < hi"):
        W.even_selection(values, 99, 50, 7, 5)


def test_wide_zoo_smoke_spreads_validation_accuracy():
    cfg = W.zoo_config("smoke", "wide", select_val_size=None, val_size=1000, test_subset=500)
    ds = W.build_zoo(cfg, verbose=False)
    val = ds.column("val_acc")
    assert len(ds) >= 8 and ds.metrics[0]["phase"] == "wide"
    counts = torch.histc(val.float(), bins=cfg["n_bins"], min=cfg["acc_lo"], max=cfg["acc_hi"])
    assert int(counts.max()) <= cfg["per_bin"]
    # from early training on: at least half of the bins are occupied, low and high accuracies both
    assert int((counts > 0).sum()) >= cfg["n_bins"] // 2
    assert float(val.max() - val.min()) > 30.0
    assert ds.test_acc.shape == val.shape
    for r in set(m["run"] for m in ds.metrics):
        steps = [m["step"] for m in ds.metrics if m["run"] == r]
        assert steps == sorted(steps)


# ---------------------------------------------------------------------------
# Conditioning over the wide zoo
# ---------------------------------------------------------------------------

def test_wide_conditioning_configs_lay_overrides():
    cfg, zoo_cfg, vae_cfg, wd_cfg = generation.wide_conditioning_configs("smoke")
    assert zoo_cfg["kind"] == "wide" and vae_cfg == config.get_config("vae", "smoke", **cfg["vae"])
    _, _, vae_cfg, _ = generation.wide_conditioning_configs("smoke", vae={"epochs": 7})
    assert vae_cfg["epochs"] == 7
    assert wd_cfg["train_steps"] == cfg["diffusion"]["train_steps"] and cfg["condition"] in generation.CONDITIONS
    with pytest.raises(KeyError, match="unknown setting"):
        generation.wide_conditioning_configs("smoke", vae={"epoch": 3})
    with pytest.raises(KeyError, match="unknown setting"):
        generation.wide_conditioning_configs("smoke", n_target=3)

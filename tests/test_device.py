"""The device runtime.setup chooses is really used: models and batches live there.

There is no GPU here, so the tests train and sample on PyTorch's "meta" device: a
meta tensor has a shape and a device but no data, ops on it propagate, and, as on
a GPU, an op that mixes a meta tensor with a CPU tensor raises ("Tensor on device
cpu is not on the expected device meta"). So a helper that forgets to move a
model, a batch or a condition to the chosen device fails here. Reading a value
off the device (``.item()``, ``.cpu()``, ``.tolist()``: the loops' logging and the
helpers' CPU results) is allowed and gives zeros (:class:`_ReadsGiveZeros`), since
a meta tensor has no value. Noise stays drawn by seeded CPU generators and moved.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from helpers import (artifacts, classifiers, diffusion, digit_eval, digit_models, evaluation, generation,
                     image_ae, image_eval, image_generation, runtime, vae, weights)

META = torch.device("meta")


class _ReadsGiveZeros(TorchFunctionMode):
    """Meta tensors read back to the CPU as zeros; every other op runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        t = args[0] if args else None
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            if func in (torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__):
                return 0
            if func is torch.Tensor.__bool__:
                return True
            if func is torch.Tensor.tolist:
                return torch.zeros(t.shape, dtype=t.dtype).tolist()
            if func is torch.Tensor.cpu or (func is torch.Tensor.to and _to_cpu(args[1:], kwargs)):
                return torch.zeros(t.shape, dtype=_to_dtype(args[1:], kwargs) or t.dtype)
        return func(*args, **kwargs)


def _to_cpu(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


def _to_dtype(args, kwargs):
    for a in list(args) + [kwargs.get("dtype")]:
        if isinstance(a, torch.dtype):
            return a
    return None


@pytest.fixture
def on_meta(tmp_path, monkeypatch):
    """The runtime's device is "meta" for the test (helpers given device=None use it)."""
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    before = runtime.set_device(META)
    with _ReadsGiveZeros():
        yield
    runtime.set_device(before)


def _on(module: torch.nn.Module, device: torch.device) -> bool:
    return all(p.device == device for p in module.parameters()) and \
        all(b.device == device for b in module.buffers())


def test_the_harness_catches_a_batch_left_on_the_cpu(on_meta):
    """The point of the meta device: a forgotten .to(device) raises, as on a GPU."""
    model = torch.nn.Linear(3, 2).to(runtime.device())
    with pytest.raises(RuntimeError, match="device"):
        model(torch.zeros(4, 3))
    assert model(torch.zeros(4, 3).to(runtime.device())).device == META


def test_setup_records_the_device_and_device_none_means_it(monkeypatch):
    before = runtime.set_device(None)
    try:
        assert runtime.device() == torch.device("cpu")          # before any setup: the CPU
        monkeypatch.setenv("LDT_DEVICE", "cpu")
        assert runtime.setup(0, threads=1, verbose=False) == torch.device("cpu")
        assert runtime.device() == torch.device("cpu")
        runtime.set_device("meta")
        assert runtime.device() == META and runtime.device("cpu") == torch.device("cpu")
    finally:
        runtime.set_device(before)


# --------------------------------------------------------------------------- weight story

SPEC = {"arch": "cnn", "in_channels": 1, "image_size": 8, "channels": [4], "kernel_size": 3,
        "stride": 2, "pool": False, "hidden": [], "n_classes": 3}
ZOO = {"seed": 0, "dataset": "mnist", "arch": "cnn", "spec": SPEC, "interp_points": 5}
VAE = {"seed": 0, "latent_dim": 4, "hidden": 16, "n_layers": 1, "beta": 1e-4, "sigma_in": 1e-3,
       "sigma_z": 0.1, "epochs": 2, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "lr_step": 1,
       "lr_gamma": 0.5, "eval_every": 1, "n_eval": 4, "n_test": 100, "n_prior": 4}
WD = {"seed": 0, "schedule": "linear", "T": 20, "hidden": 16, "n_blocks": 1, "time_dim": 8, "dropout": 0.0,
      "conditional": True, "p_uncond": 0.2, "train_steps": 3, "batch_size": 8, "lr": 1e-3,
      "weight_decay": 0.0, "warmup_steps": 1, "lr_schedule": "cosine", "ema_decay": 0.9,
      "ddim_steps": 3, "eta": 0.0, "clip_x0": 5.0, "n_generated": 4, "n_test": 100,
      "direct_input_skip": True, "direct_hidden": 16, "direct_n_blocks": 1, "direct_train_steps": 2,
      "direct_lr": 1e-3, "cond_quantiles": [0.5], "n_per_target": 2, "guidance": 2.0, "gif_fps": 4}


def _synthetic_zoo(n: int = 12) -> weights.WeightDataset:
    """A stored zoo of ``n`` random networks of SPEC, where build_or_load_zoo(ZOO) finds it."""
    g = torch.Generator().manual_seed(0)
    vectors = 0.1 * torch.randn(n, classifiers.count_params(SPEC), generator=g)
    metrics = [{"run_seed": 0, "epoch": 1, "step": i, "train_loss": 1.0, "test_acc": 80.0 + i}
               for i in range(n)]
    ds = weights.WeightDataset(vectors, SPEC, metrics, dict(ZOO))
    with artifacts.recording(weights.zoo_path(ZOO), weights.zoo_key(ZOO)):   # as build_or_load_zoo would
        ds.save(weights.zoo_path(ZOO))
    return ds


def test_weight_story_trains_and_samples_on_the_chosen_device(on_meta):
    ds = _synthetic_zoo()
    model, info = vae.build_or_load_vae(ZOO, VAE)                      # trained on meta, saved from a CPU copy
    assert _on(model, META) and len(info["history"]["loss"]) == 2
    tensors, meta = artifacts.load_tensors(info["path"])               # the file holds CPU tensors
    assert all(t.device.type == "cpu" for t in tensors.values()) and meta["kind"] == vae.KIND
    assert vae.encode_dataset(model, ds).device.type == "cpu"
    prior = vae.sample_prior(model, 3, torch.Generator().manual_seed(0))
    assert prior.shape == (3, ds.dim) and prior.device.type == "cpu"

    den, dinfo = generation.build_or_load_weight_diffusion(ZOO, VAE, WD)
    assert _on(den, META) and _on(dinfo["vae"], META)
    nets = generation.generate_networks(4, den, dinfo["vae"], dinfo, steps=3, seed=0, target_acc=85.0,
                                        guidance=2.0, clip_x0=5.0)
    assert nets.shape == (4, ds.dim) and nets.device.type == "cpu"
    direct, direct_info = generation.build_or_load_direct_diffusion(ZOO, WD)
    assert _on(direct, META)
    assert generation.generate_direct(2, direct, direct_info, steps=2, seed=0).device.type == "cpu"

    # a second call loads the artifacts onto the device
    again, _ = generation.build_or_load_weight_diffusion(ZOO, VAE, WD)
    assert _on(again, META)

    # the classifiers: a training step of K stacked networks, predictions of weight vectors
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    params = classifiers.init_stacked(SPEC, [0, 1])
    losses, _ = classifiers.train_stacked(params, SPEC, x, y, epochs=1, batch_size=8)
    assert all(p.device == META for p in params.values()) and losses.device.type == "cpu"
    acc = classifiers.evaluate_vectors(nets, SPEC, x, y)
    assert acc.shape == (4,) and acc.device.type == "cpu"
    assert evaluation.finetune_vectors(nets, SPEC, x, y, steps=2, batch_size=8).device.type == "cpu"
    curves = evaluation.finetune_curves({"generated": nets[0]}, SPEC, (x, y, x, y), steps=2, batch_size=8,
                                        eval_every=1, progress=False)
    assert len(curves["generated"]["loss"]) == 2


# --------------------------------------------------------------------------- image story

CATDOG = {"seed": 0, "n_train": 8, "ae_channels": [4, 8, 8], "latent_dim": 8, "latent_channels": 4,
          "ae_n_cab": 1, "ae_epochs": 1, "ae_batch_size": 4, "ae_lr": 1e-3, "ae_w_cls": 0.1,
          "ae_w_center": 0.01, "ae_latent_noise": 0.05, "ae_w_l1": 1.0, "ae_w_grad": 0.0,
          "clf_channels": [4, 8, 8], "clf_epochs": 1, "clf_batch_size": 4, "clf_lr": 1e-3, "clf_blur": 0.5,
          "den_objective": "ddpm", "den_kind": "unet", "den_width": 8, "den_mults": [1, 2], "den_res": 1,
          "den_attention": True, "den_hidden": 16, "den_blocks": 1, "den_time_dim": 8, "den_steps": 2,
          "den_batch_size": 4, "den_lr": 1e-3, "den_ema": 0.9, "den_p_uncond": 0.1, "T": 20,
          "schedule": "cosine"}


def test_image_story_trains_and_samples_on_the_chosen_device(on_meta):
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 4)
    ae, _ = image_ae.build_or_load_autoencoder(CATDOG, x, y)
    assert _on(ae, META)
    z = image_ae.encode_all(ae, x)
    assert z.shape == (8, 4, 8, 8) and z.device.type == "cpu"
    scaler = diffusion.LatentStandardizer(torch.zeros(4, 1, 1), torch.ones(4, 1, 1))
    den, hist = image_generation.build_or_load_latent_denoiser(CATDOG, scaler.standardize(z), y, "ae0")
    assert _on(den, META) and len(hist["loss"]) == 2
    gen = image_generation.ImageGenerator(ae, den, diffusion.NoiseSchedule.make("cosine", 20), scaler)
    images = gen.generate(torch.tensor([0, 1]), steps=2, guidance=2.0)
    assert images.shape == (2, 3, 32, 32) and images.device.type == "cpu"
    judge = image_eval.build_or_load_classifier(CATDOG, x, y)
    assert _on(judge, META)
    probs, feats = image_eval.predict(judge, images)
    assert probs.device.type == "cpu" and feats.device.type == "cpu"


DIGITS = {"seed": 0, "vae_latent": 4, "vae_channels": [4, 8], "vae_epochs": 1, "vae_batch_size": 8,
          "vae_lr": 1e-3, "vae_beta": 0.5, "vae_w_cls": 0.1, "n_train": 16, "val_size": 4,
          "gen_steps": 2, "gen_batch_size": 8, "gen_lr": 1e-3, "gen_ema": 0.9, "gen_p_uncond": 0.1,
          "T": 20, "schedule": "linear", "judge_spec": {"channels": [4, 8], "hidden": [8]},
          "judge_epochs": 1, "judge_shift": 1}


def test_digit_models_train_and_sample_on_the_chosen_device(on_meta):
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    y = torch.arange(16) % 10
    model, _ = digit_models.build_or_load_vae(DIGITS, x, y, "mnist")
    assert _on(model, META)
    codes = digit_models.encode_all(model, x)
    assert codes.device.type == "cpu"
    for kind in ("flow", "ddpm"):
        gen, hist = digit_models.build_or_load_generator(DIGITS, kind, "tiny", codes, y, "vae0")
        assert _on(gen, META) and len(hist["loss"]) == 2
        z = digit_models.sample_latents(gen, kind, torch.tensor([1, 2]), 4, steps=2, guidance=2.0,
                                        sched=diffusion.NoiseSchedule.make("linear", 20))
        assert z.device == META                 # samples stay on the device; decode_all brings images back
        assert digit_models.decode_all(model, z).device.type == "cpu"
    judge, _ = digit_eval.build_or_load_cnn(DIGITS, "judge", "mnist", x, y)
    assert _on(judge, META)
    probs, feats = digit_eval.cnn_features(judge, x, "mnist")
    assert probs.device.type == "cpu" and feats.device.type == "cpu"

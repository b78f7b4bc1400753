"""Tests of helpers.vae on small synthetic weight vectors (no zoo, no MNIST needed)."""

import pytest
import torch

from helpers import artifacts, vae

D, L = 60, 8


def _cfg(**kw):
    cfg = {"seed": 0, "latent_dim": L, "hidden": 32, "n_layers": 1, "beta": 0.0,
           "sigma_in": 1e-3, "sigma_z": 0.1, "epochs": 40, "batch_size": 16, "lr": 3e-3,
           "weight_decay": 0.0, "lr_step": 30, "lr_gamma": 0.3, "eval_every": 10}
    cfg.update(kw)
    return cfg


def _vectors(n=64, seed=0):
    """Synthetic 'checkpoints': a base vector plus a rank-3 trajectory and a little noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(D, generator=g)
    return base + torch.randn(n, 3, generator=g) @ torch.randn(3, D, generator=g) \
        + 0.01 * torch.randn(n, D, generator=g)


class _IdentityNormalizer:
    """Stands in for helpers.weights.Normalizer on synthetic vectors."""

    def normalize(self, v):
        return v

    def denormalize(self, x):
        return x

    def state(self):
        return {}


def _model(**kw):
    torch.manual_seed(0)
    return vae.model_from_config(D, _cfg(**kw))


def test_encode_decode_shapes():
    model = _model().eval()
    mu, logvar = model.encode(torch.randn(5, D))
    assert mu.shape == logvar.shape == (5, L)
    assert model.decode(mu).shape == (5, D)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(K, 60\), found \(5, 59\)"):
        model.encode(torch.randn(5, 59))


def test_short_training_lowers_reconstruction_loss():
    x = _vectors()
    model = _model()
    before = vae.reconstruction_mse(model, x)
    hist = vae.train_vae(model, x, _cfg(epochs=30, batch_size=16, lr=1e-2, lr_step=20))
    after = vae.reconstruction_mse(model, x)
    assert after < 0.2 * before
    assert hist["recon"][-1] < hist["recon"][0]
    assert len(hist["loss"]) == 30 and hist["eval_epoch"][-1] == 30
    # StepLR: the learning rate drops by lr_gamma after lr_step epochs
    assert hist["lr"][19] == pytest.approx(1e-2) and hist["lr"][20] == pytest.approx(3e-3)


def test_beta_zero_has_no_kl_term():
    x = _vectors(8)
    parts = _model(beta=0.0).train().loss(x)
    assert parts["kl"].item() == 0.0
    assert parts["loss"].item() == pytest.approx(parts["recon"].item())
    parts = _model(beta=0.5).train().loss(x)
    assert parts["kl"].item() > 0
    assert parts["loss"].item() == pytest.approx(parts["recon"].item() + 0.5 * parts["kl"].item(), rel=1e-5)


def test_noise_only_in_training_mode():
    x = _vectors(4)
    model = _model(beta=0.1, sigma_in=0.05, sigma_z=0.5)
    model.eval()
    a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b)
    assert torch.equal(model.encode(x)[0], model.encode(x)[0])
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])


def test_latent_standardizer_round_trip_and_unit_scale():
    g = torch.Generator().manual_seed(1)
    z = 5.0 + 3.0 * torch.randn(200, L, generator=g) * torch.arange(1, L + 1)
    st = vae.LatentStandardizer().fit(z)
    u = st.standardize(z)
    assert torch.allclose(u.mean(0), torch.zeros(L), atol=1e-5)
    assert torch.allclose(u.std(0), torch.ones(L), atol=1e-5)
    assert torch.allclose(st.unstandardize(u), z, atol=1e-4)
    st2 = vae.LatentStandardizer.from_state(st.state())
    assert torch.equal(st2.standardize(z), u)


def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    x = _vectors(32)
    model = _model(beta=1e-3)
    hist = vae.train_vae(model, x, _cfg(epochs=3, beta=1e-3))
    model.normalizer = _IdentityNormalizer()
    model.latent_standardizer = vae.LatentStandardizer().fit(vae.encode_dataset(model, x))
    model.spec = {"arch": "synthetic", "D": D}
    path = vae.save_vae(model, tmp_path / "vae.safetensors", history=hist, config=_cfg())
    model.normalizer = None  # the file has no normalizer tensors: load leaves it unset
    loaded, info = vae.load_vae(path, dim=D, spec={"arch": "synthetic", "D": D})
    loaded.normalizer = _IdentityNormalizer()
    model.normalizer = _IdentityNormalizer()
    assert not loaded.training
    assert torch.equal(loaded.encode(x)[0], model.eval().encode(x)[0])
    u = torch.randn(5, L)
    assert torch.equal(vae.decode_to_vectors(loaded, u), vae.decode_to_vectors(model, u))
    assert info["history"]["recon"] == pytest.approx(hist["recon"])
    assert loaded.arch == model.arch and loaded.spec == model.spec


def test_save_load_with_weight_normalizer(tmp_path):
    weights = pytest.importorskip("helpers.weights")
    classifiers = pytest.importorskip("helpers.classifiers")
    spec = classifiers.default_spec("mnist", "mlp")
    d = classifiers.count_params(spec)
    w = 0.1 * torch.randn(6, d)
    model = vae.ParamVAE(d, latent_dim=4, hidden=8, n_layers=1)
    model.normalizer = weights.Normalizer().fit(w, spec)
    model.latent_standardizer = vae.LatentStandardizer().fit(vae.encode_dataset(model, w))
    model.spec = spec
    path = vae.save_vae(model, tmp_path / "vae.safetensors")
    loaded, _ = vae.load_vae(path, dim=d, spec=spec)
    assert torch.equal(vae.reconstruct(loaded, w), vae.reconstruct(model, w))
    assert vae.reconstruct(loaded, w).shape == (6, d)


def test_loading_with_wrong_dim_names_expected_and_found(tmp_path):
    model = _model()
    path = vae.save_vae(model, tmp_path / "vae.safetensors")
    with pytest.raises(artifacts.ArtifactError, match=r"expected D=61, found D=60"):
        vae.load_vae(path, dim=61)
    with pytest.raises(artifacts.ArtifactError, match="expected spec .*found"):
        model.spec = {"arch": "a"}
        vae.save_vae(model, path)
        vae.load_vae(path, dim=D, spec={"arch": "b"})


def test_prior_samples_are_seeded_and_come_from_the_right_prior():
    x = _vectors(32)
    for beta in (0.0, 1e-2):
        model = _model(beta=beta)
        model.normalizer = _IdentityNormalizer()
        model.latent_standardizer = vae.LatentStandardizer().fit(vae.encode_dataset(model, x))
        a = vae.sample_prior(model, 7, torch.Generator().manual_seed(0))
        assert a.shape == (7, D)
        assert torch.equal(a, vae.sample_prior(model, 7, torch.Generator().manual_seed(0)))
        eps = torch.randn(7, L, generator=torch.Generator().manual_seed(0))
        # VAE: z ~ N(0, I); plain AE: u ~ N(0, I) in standardised units
        expected = vae.decode_latents(model, eps) if beta > 0 else vae.decode_to_vectors(model, eps)
        assert torch.equal(a, expected)


def test_explicit_noise_fixes_the_training_loss():
    x = _vectors(8)
    model = _model(beta=1e-2).train()
    g = torch.Generator().manual_seed(0)
    noise = {"xi": torch.randn(8, D, generator=g), "eps": torch.randn(8, L, generator=g),
             "zeta": torch.randn(8, L, generator=g)}
    a, b = model.loss(x, noise)["loss"], model.loss(x, noise)["loss"]
    assert torch.equal(a, b) and not torch.equal(a, model.loss(x)["loss"])
    # with zero noise the training-mode reconstruction is the deterministic D(mu(x))
    zero = {k: torch.zeros_like(v) for k, v in noise.items()}
    recon = model.loss(x, zero)["recon"]
    with torch.no_grad():
        expected = ((model.eval().decode(model.encode(x)[0]) - x) ** 2).mean()
    torch.testing.assert_close(recon.detach(), expected)


def test_permutation_augmentation_is_refused_and_not_in_the_cache_key():
    from helpers import config, weights
    with pytest.raises(ValueError, match=r"^permute_augment: expected 0 \(permutation augmentation was removed\), found 0.5$"):
        vae.train_vae(_model(), _vectors(16), _cfg(epochs=1, permute_augment=0.5))
    zoo_cfg = weights.zoo_config("smoke", "multiseed")
    vae_cfg = config.get_config("vae", "smoke")
    assert "permute_augment" not in vae.vae_key(zoo_cfg, vae_cfg)["vae"]
    assert vae.vae_key(zoo_cfg, vae_cfg) != vae.vae_key(zoo_cfg, {**vae_cfg, "epochs": 3})


def test_a_diverging_learning_rate_stops_training_naming_the_step_and_lr():
    from helpers import runtime
    with pytest.raises(runtime.DivergenceError, match=r"training of parameter VAE diverged at step \d+: .*lr=1000000.0"):
        vae.train_vae(_model(), _vectors(32), _cfg(epochs=5, lr=1e6))

"""The adversarial decoder stage: discriminator shape, hinge loss, adaptive weight, a frozen encoder, caching."""

import pytest
import torch

from helpers import adversarial, image_ae

CFG = {"seed": 0, "n_train": 16, "ae_channels": [4, 8, 8], "latent_dim": 8, "ae_epochs": 1,
       "ae_batch_size": 8, "ae_lr": 1e-3, "ae_w_cls": 0.1, "ae_w_center": 0.01, "ae_latent_noise": 0.05,
       "latent_channels": 4, "ae_n_cab": 1, "ae_w_l1": 1.0, "ae_w_grad": 0.0,
       "ae_adv_steps": 6, "ae_adv_batch_size": 8, "ae_adv_lr": 1e-3, "ae_adv_weight": 0.5, "ae_adv_warmup": 2,
       "ae_adv_width": 8}


def _images(n=16, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_patch_discriminator_scores_8x8_patches():
    disc = adversarial.PatchDiscriminator(width=8)
    assert disc(torch.randn(3, 3, 32, 32)).shape == (3, 1, 8, 8)


def test_hinge_loss_values():
    two = torch.full((4, 1, 8, 8), 2.0)
    # confident and right on both sides: no loss; undecided: 1 + 1
    assert adversarial.hinge_d_loss(two, -two).item() == 0.0
    assert adversarial.hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2.0)
    # wrong on the fakes only: relu(1 + 2) = 3
    assert adversarial.hinge_d_loss(two, two).item() == pytest.approx(3.0)


def test_adaptive_weight_balances_the_two_gradients():
    p = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    lam = adversarial.adaptive_weight((p * a).sum(), (p * b).sum(), p, weight=0.5)
    # 0.5 * ||a|| / (||b|| + 1e-4) = 0.5 * 5 / 1.0001
    assert lam.item() == pytest.approx(2.5 / 1.0001, rel=1e-5)
    assert not lam.requires_grad


def test_finetune_changes_only_the_decoder_and_is_deterministic():
    torch.manual_seed(0)
    ae = image_ae.ImageAutoencoder((4, 8, 8), 8, 2, latent_channels=4, n_cab=1)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    x = _images()
    m1, h1 = adversarial.finetune_decoder(ae, x, steps=6, batch_size=8, lr=1e-3, warmup=2, d_width=8)
    m2, _ = adversarial.finetune_decoder(ae, x, steps=6, batch_size=8, lr=1e-3, warmup=2, d_width=8)
    for k, v in ae.state_dict().items():          # the input model is left as it was
        assert torch.equal(v, before[k]), k
    enc = [k for k in before if k.startswith("encoder.")]
    dec = [k for k in before if k.startswith("decoder.") and before[k].is_floating_point()]
    assert enc and dec
    for k in enc:                                  # the codes do not move
        assert torch.equal(m1.state_dict()[k], before[k]), k
    assert any(not torch.equal(m1.state_dict()[k], before[k]) for k in dec)
    for k, v in m1.state_dict().items():          # same seed, same result
        assert torch.equal(v, m2.state_dict()[k]), k
    assert h1["lambda"][:2] == [0.0, 0.0] and all(lam > 0 for lam in h1["lambda"][2:])
    assert len(h1["rec"]) == len(h1["d_loss"]) == 6
    assert not any(p.requires_grad for p in m1.parameters())


def test_finetune_rejects_a_flat_code_and_wrong_images():
    flat = image_ae.ImageAutoencoder((4, 8, 8), 8, 2)
    with pytest.raises(ValueError, match="spatial autoencoder"):
        adversarial.finetune_decoder(flat, _images(), steps=1)
    spatial = image_ae.ImageAutoencoder((4, 8, 8), 8, 2, latent_channels=4, n_cab=1)
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\); got \(16, 3, 28, 28\)"):
        adversarial.finetune_decoder(spatial, torch.zeros(16, 3, 28, 28, dtype=torch.uint8), steps=1)


def test_sharp_autoencoder_is_cached_and_off_when_steps_are_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    x, y = _images(), torch.tensor([0, 1] * 8)
    ae, _ = image_ae.build_or_load_autoencoder(CFG, x, y)
    same, hist = adversarial.build_or_load_sharp_autoencoder({**CFG, "ae_adv_steps": 0}, ae, x)
    assert same is ae and hist is None
    m1, h1 = adversarial.build_or_load_sharp_autoencoder(CFG, ae, x)
    m2, h2 = adversarial.build_or_load_sharp_autoencoder(CFG, ae, x)
    assert len(list(tmp_path.glob("catdog_autoencoder_sharp-*.safetensors"))) == 1
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert h2["rec"] == pytest.approx(h1["rec"]) and h2["seconds"] == pytest.approx(h1["seconds"])
    # another adversarial setting is another artifact; the autoencoder's own file is untouched
    adversarial.build_or_load_sharp_autoencoder({**CFG, "ae_adv_weight": 0.1}, ae, x)
    assert len(list(tmp_path.glob("catdog_autoencoder_sharp-*.safetensors"))) == 2
    assert len(list(tmp_path.glob("catdog_autoencoder-*.safetensors"))) == 1

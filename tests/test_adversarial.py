"""The decoder's adversarial stage: patch critic, hinge loss, adaptive weight, a fine-tuning that leaves the encoder alone."""

import pytest
import torch

from helpers import adversarial, image_ae

CFG = {"seed": 0, "n_train": 16, "ae_channels": [4, 8, 8], "latent_channels": 4, "ae_n_cab": 1, "ae_epochs": 1,
       "ae_batch_size": 8, "ae_lr": 1e-3, "ae_w_cls": 0.1, "ae_w_center": 0.01, "ae_latent_noise": 0.05,
       "ae_w_l1": 1.0, "ae_adv_steps": 3, "ae_adv_batch_size": 4, "ae_adv_lr": 1e-3, "ae_adv_weight": 0.5,
       "ae_adv_warmup": 1, "ae_adv_width": 4}


def _images(n=16):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_patch_discriminator_scores_8x8_patches():
    assert adversarial.PatchDiscriminator(8)(torch.randn(2, 3, 32, 32)).shape == (2, 1, 8, 8)


def test_hinge_loss_values():
    ones = torch.ones(4)
    assert adversarial.hinge_d_loss(ones, -ones).item() == 0.0  # confident and right: no loss
    assert adversarial.hinge_d_loss(-ones, ones).item() == pytest.approx(4.0)
    assert adversarial.hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2.0)


def test_adaptive_weight_balances_the_two_gradients():
    w = torch.randn(5, requires_grad=True)
    rec, adv = (3 * w).sum(), (0.5 * w).sum()  # gradients 3 and 0.5 per entry
    lam = adversarial.adaptive_weight(rec, adv, w, weight=0.5)
    assert lam.item() == pytest.approx(0.5 * 3 / 0.5, rel=1e-3) and not lam.requires_grad


def test_finetune_changes_only_the_decoder_and_is_deterministic():
    torch.manual_seed(0)
    ae = image_ae.ImageAutoencoder((4, 8, 8), latent_channels=4)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    a, hist = adversarial.finetune_decoder(ae, _images(), steps=4, batch_size=4, warmup=2, d_width=4)
    b, _ = adversarial.finetune_decoder(ae, _images(), steps=4, batch_size=4, warmup=2, d_width=4)
    torch.testing.assert_close(ae.state_dict(), before, rtol=0, atol=0)  # the input model is untouched
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)
    for k, v in a.state_dict().items():
        assert torch.equal(v, before[k]) != k.startswith("decoder."), k
    assert hist["lambda"][:2] == [0.0, 0.0] and hist["lambda"][2] > 0
    assert not any(p.requires_grad for p in a.parameters())


def test_finetune_rejects_wrong_images():
    ae = image_ae.ImageAutoencoder((4, 8, 8), latent_channels=4)
    with pytest.raises(ValueError, match=r"expected images shaped \(N, 3, 32, 32\); got \(2, 3, 16, 16\)"):
        adversarial.finetune_decoder(ae, torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_sharp_autoencoder_is_cached_and_off_when_steps_are_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    x, y = _images(), torch.tensor([0, 1] * 8)
    ae, _ = image_ae.build_or_load_autoencoder(CFG, x, y)
    assert adversarial.build_or_load_sharp_autoencoder({**CFG, "ae_adv_steps": 0}, ae, x) == (ae, None)
    m1, h1 = adversarial.build_or_load_sharp_autoencoder(CFG, ae, x)
    m2, h2 = adversarial.build_or_load_sharp_autoencoder(CFG, ae, x)
    assert len(list(tmp_path.glob("catdog_autoencoder_sharp-*.safetensors"))) == 1
    torch.testing.assert_close(m1.state_dict(), m2.state_dict(), rtol=0, atol=0)
    assert h2["rec"] == pytest.approx(h1["rec"]) and len(h2["lambda"]) == 3

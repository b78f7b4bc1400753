"""The cat/dog image autoencoder: shapes, attention blocks, center loss, a loss that falls, caching."""

import pytest
import torch

from helpers import artifacts, diffusion, image_ae


def test_encoder_decoder_shapes():
    model = image_ae.ImageAutoencoder((8, 16, 32), latent_dim=24)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    z, x_hat, logits = model(x)
    assert z.shape == (5, 24)
    assert x_hat.shape == (5, 3, 32, 32)
    assert logits.shape == (5, 2)
    assert model.decode(torch.randn(3, 24)).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("block", [image_ae.CAL(16), image_ae.CAB(16)])
def test_attention_blocks_keep_shape(block):
    x = torch.randn(2, 16, 8, 8)
    assert block(x).shape == x.shape


def test_cal_gates_between_zero_and_input():
    cal = image_ae.CAL(8)
    x = torch.rand(2, 8, 4, 4) + 0.1
    y = cal(x)
    assert torch.all(y > 0) and torch.all(y < x)


def test_center_loss_zero_on_centers_positive_elsewhere():
    loss = image_ae.CenterLoss(2, 6)
    y = torch.tensor([0, 1, 1, 0])
    z = loss.centers.detach()[y].clone()
    assert loss(z, y).item() == pytest.approx(0.0, abs=1e-12)
    assert loss(z + 0.5, y).item() > 0.1
    # a code on the *other* class's center is penalised
    assert loss(loss.centers.detach()[1 - y], y).item() > 0


def test_ae_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_dim=16)
    # smooth images (random 4x4 colour patterns, upsampled): learnable in a few steps
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4), size=32, mode="nearest") * 2 - 1
    y = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, parts = image_ae.ae_loss(model, x, y, latent_noise=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"rec", "cls", "center"}
    assert losses[-1] < 0.7 * losses[0]


def test_pixel_scaling_round_trip():
    u = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    back = (image_ae.to_unit(image_ae.to_model(u)) * 255).round().to(torch.uint8)
    assert torch.equal(back, u)


def test_latent_scaler_round_trip():
    z = torch.randn(100, 5) * 3 + 2
    s = diffusion.LatentStandardizer.fit(z)
    zs = s.standardize(z)
    assert torch.allclose(zs.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(s.unstandardize(zs), z, atol=1e-5)


def test_build_or_load_caches_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = {"seed": 0, "n_train": 16, "ae_channels": [4, 8, 8], "latent_dim": 8, "ae_epochs": 1,
           "ae_batch_size": 8, "ae_lr": 1e-3, "ae_w_cls": 0.1, "ae_w_center": 0.01,
           "ae_latent_noise": 0.05}
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 8)
    m1, h1 = image_ae.build_or_load_autoencoder(cfg, x, y, snapshot_x=x[:4], snapshot_every=1)
    m2, h2 = image_ae.build_or_load_autoencoder(cfg, x, y)
    assert len(list(tmp_path.glob("catdog_autoencoder-*.safetensors"))) == 1
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert h2["snapshots"][0][1].shape == (4, 8)


def test_latent_terms_are_relative_to_the_code_scale():
    # the old bug: an absolute center loss + fixed noise made codes shrink to nothing.
    # Scaling every code (and the centers) by 10 must leave the center term unchanged.
    torch.manual_seed(0)
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_dim=12)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1] * 3)
    _, parts = image_ae.ae_loss(model, x, y, latent_noise=0.0)
    with torch.no_grad():
        model.encoder.out.weight.mul_(10)
        model.encoder.out.bias.mul_(10)
        model.center.centers.mul_(10)
    _, parts10 = image_ae.ae_loss(model, x, y, latent_noise=0.0)
    assert parts10["center"] == pytest.approx(parts["center"], rel=1e-4)


# ---------------------------------------------------------------------------
# The spatial autoencoder (code (C, 8, 8))
# ---------------------------------------------------------------------------

def test_spatial_autoencoder_shapes_and_pooled_code():
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_channels=4, n_cab=1)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    z, x_hat, logits = model(x)
    assert z.shape == (5, 4, 8, 8) and model.latent_shape == (4, 8, 8) and model.latent_dim == 256
    assert x_hat.shape == (5, 3, 32, 32) and logits.shape == (5, 2)
    p = model.pooled(z)
    assert p.shape == (5, 20)
    # the first C numbers are the channel means over the whole map
    assert torch.allclose(p[:, :4], z.mean(dim=(2, 3)))


def test_spatial_ae_loss_falls_with_l1_and_edge_terms():
    torch.manual_seed(0)
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_channels=4, n_cab=1)
    x = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4), size=32, mode="nearest") * 2 - 1
    y = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, parts = image_ae.ae_loss(model, x, y, latent_noise=0.1, generator=torch.Generator().manual_seed(0),
                                       w_l1=1.0, w_grad=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"rec", "l1", "grad", "cls", "center"}
    assert losses[-1] < 0.7 * losses[0]


def test_spatial_center_term_is_relative_to_the_code_scale():
    torch.manual_seed(0)
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_channels=4, n_cab=1)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1] * 3)
    _, parts = image_ae.ae_loss(model, x, y)
    with torch.no_grad():
        model.encoder.out.weight.mul_(10)
        model.encoder.out.bias.mul_(10)
        model.center.centers.mul_(10)
    _, parts10 = image_ae.ae_loss(model, x, y)
    assert parts10["center"] == pytest.approx(parts["center"], rel=1e-4)


def test_latent_scaler_per_channel_on_maps():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 3, 8, 8, generator=g) * torch.tensor([1.0, 5.0, 0.2])[:, None, None] + 3
    s = diffusion.LatentStandardizer.fit(z)
    assert s.mean.shape == (3, 1, 1) and s.scale.shape == (3, 1, 1)
    zs = s.standardize(z)
    assert torch.allclose(zs.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.allclose(s.unstandardize(zs), z, atol=1e-4)
    back = diffusion.LatentStandardizer.from_state(s.state())
    assert torch.equal(back.scale, s.scale)


def test_psnr_values_and_error():
    assert image_ae.psnr(0.01) == pytest.approx(20.0)
    assert image_ae.psnr(0.001) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="positive MSE; got 0"):
        image_ae.psnr(0.0)


def test_cached_builder_rebuilds_a_file_of_another_kind(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = {"seed": 0, "n_train": 16, "ae_channels": [4, 8, 8], "latent_dim": 8, "ae_epochs": 1,
           "ae_batch_size": 8, "ae_lr": 1e-3, "ae_w_cls": 0.1, "ae_w_center": 0.01,
           "ae_latent_noise": 0.05, "latent_channels": 8, "ae_n_cab": 1}
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 8)
    m1, _ = image_ae.build_or_load_autoencoder(cfg, x, y)
    (path,) = tmp_path.glob("catdog_autoencoder-*.safetensors")
    artifacts.save_tensors(path, {"w": torch.zeros(1)}, {"kind": "vae"})
    capsys.readouterr()
    m2, _ = image_ae.build_or_load_autoencoder(cfg, x, y)
    assert "expected an artifact of kind 'image_autoencoder', found kind 'vae'" in capsys.readouterr().out
    assert m2.latent_shape == (8, 8, 8)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_cache_key_separates_latent_shapes(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    cfg = {"seed": 0, "n_train": 16, "ae_channels": [4, 8, 8], "latent_dim": 8, "ae_epochs": 1,
           "ae_batch_size": 8, "ae_lr": 1e-3, "ae_w_cls": 0.1, "ae_w_center": 0.01,
           "ae_latent_noise": 0.05, "latent_channels": 4, "ae_n_cab": 1, "ae_w_l1": 1.0, "ae_w_grad": 0.0}
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 8)
    m4, h4 = image_ae.build_or_load_autoencoder(cfg, x, y, snapshot_x=x[:4], snapshot_every=1)
    m8, _ = image_ae.build_or_load_autoencoder({**cfg, "latent_channels": 8}, x, y)
    assert len(list(tmp_path.glob("catdog_autoencoder-*.safetensors"))) == 2
    assert m4.latent_shape == (4, 8, 8) and m8.latent_shape == (8, 8, 8)
    # the t-SNE snapshots hold pooled codes
    assert h4["snapshots"][0][1].shape == (4, 20)
    m4b, h4b = image_ae.build_or_load_autoencoder(cfg, x, y)
    assert h4b["seconds"] == pytest.approx(h4["seconds"])
    for a, b in zip(m4.state_dict().values(), m4b.state_dict().values()):
        assert torch.equal(a, b)

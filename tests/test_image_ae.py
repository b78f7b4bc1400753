"""The cat/dog image autoencoder: shapes, attention blocks, center loss, a loss that falls, caching."""

import pytest
import torch

from helpers import artifacts, image_ae

CFG = {"seed": 0, "n_train": 16, "ae_channels": [4, 8, 8], "latent_channels": 4, "ae_n_cab": 1, "ae_epochs": 1,
       "ae_batch_size": 8, "ae_lr": 1e-3, "ae_w_cls": 0.1, "ae_w_center": 0.01, "ae_latent_noise": 0.05,
       "ae_w_l1": 1.0}


def test_autoencoder_shapes_and_pooled_code():
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_channels=3, n_cab=2)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    z = model.encode(x)
    assert z.shape == (5, 3, 8, 8) and model.latent_shape == (3, 8, 8)
    assert model.decode(z).shape == (5, 3, 32, 32)
    p = model.pooled(z)
    assert p.shape == (5, 15)
    torch.testing.assert_close(p[:, :3], z.mean(dim=(2, 3)))  # the global mean first
    torch.testing.assert_close(p[:, 3], z[:, 0, :4, :4].mean(dim=(1, 2)))  # then the quadrants of channel 0
    assert model.head(p).shape == (5, 2)


@pytest.mark.parametrize("block", [image_ae.CAL(16), image_ae.CAB(16)])
def test_attention_blocks_keep_shape(block):
    x = torch.randn(2, 16, 8, 8)
    assert block(x).shape == x.shape


def test_cal_gates_between_zero_and_input():
    cal = image_ae.CAL(8)
    x = torch.rand(3, 8, 4, 4) + 0.1
    out = cal(x)
    assert (out >= 0).all() and (out <= x).all()


def test_center_loss_zero_on_centers_positive_elsewhere():
    loss = image_ae.CenterLoss(2, 4)
    y = torch.tensor([0, 1, 1])
    assert loss(loss.centers[y].detach(), y).item() == 0.0
    assert loss(loss.centers[y].detach() + 1.0, y).item() == pytest.approx(0.5 * 4)


def test_ae_loss_falls_on_a_tiny_batch():
    torch.manual_seed(0)
    model = image_ae.ImageAutoencoder((4, 8, 8), latent_channels=4)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, parts = image_ae.ae_loss(model, x, y, latent_noise=0.1, generator=torch.Generator().manual_seed(0),
                                       w_l1=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert {"rec", "l1", "cls", "center"} <= set(parts)


def test_center_term_is_relative_to_the_code_scale():
    # an absolute center loss would be lowered by shrinking every code; ours is not changed by a scale
    torch.manual_seed(0)
    model = image_ae.ImageAutoencoder((8, 16, 16), latent_channels=4)
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    y = torch.tensor([0, 1] * 3)
    _, parts = image_ae.ae_loss(model, x, y)
    with torch.no_grad():
        for t in (model.encoder.out.weight, model.encoder.out.bias, model.center.centers):
            t.mul_(10)
    _, parts10 = image_ae.ae_loss(model, x, y)
    assert parts10["center"] == pytest.approx(parts["center"], rel=1e-4)


def test_noisy_codes_scale_with_the_codes_and_follow_the_generator():
    z = torch.randn(16, 4, 8, 8)
    a = image_ae.noisy_codes(z, 0.1, torch.Generator().manual_seed(0))
    b = image_ae.noisy_codes(10 * z, 0.1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(b, 10 * a)
    assert not torch.equal(a, image_ae.noisy_codes(z, 0.1, torch.Generator().manual_seed(1)))


def test_encode_decode_all_batches_and_pixel_range():
    model = image_ae.ImageAutoencoder((4, 8, 8), latent_channels=2)
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    z = image_ae.encode_all(model, x, batch_size=3)
    torch.testing.assert_close(z, model.encode(image_ae.to_model(x)))
    imgs = image_ae.decode_all(model, z, batch_size=2)
    assert imgs.shape == (7, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
    assert image_ae.to_model(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_build_or_load_caches_by_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 8)
    m1, h1 = image_ae.build_or_load_autoencoder(CFG, x, y)
    m2, h2 = image_ae.build_or_load_autoencoder({**CFG, "tsne_points": 3}, x, y)  # not a training setting
    assert len(list(tmp_path.glob("catdog_autoencoder-*.safetensors"))) == 1
    torch.testing.assert_close(m1.state_dict(), m2.state_dict(), rtol=0, atol=0)
    assert h2["loss"] == pytest.approx(h1["loss"]) and h2["seconds"] == pytest.approx(h1["seconds"])
    image_ae.build_or_load_autoencoder({**CFG, "latent_channels": 2}, x, y)
    assert len(list(tmp_path.glob("catdog_autoencoder-*.safetensors"))) == 2


def test_cached_builder_rebuilds_a_file_of_another_kind(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1] * 8)
    m1, _ = image_ae.build_or_load_autoencoder(CFG, x, y)
    (path,) = tmp_path.glob("catdog_autoencoder-*.safetensors")
    artifacts.save_tensors(path, {"w": torch.zeros(1)}, {"kind": "vae"})
    capsys.readouterr()
    m2, _ = image_ae.build_or_load_autoencoder(CFG, x, y)
    assert "expected an artifact of kind 'image_autoencoder', found kind 'vae'" in capsys.readouterr().out
    torch.testing.assert_close(m1.state_dict(), m2.state_dict(), rtol=0, atol=0)


def test_a_diverging_learning_rate_stops_with_the_step_and_setting_named():
    from helpers import config, runtime
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 2, (64,))
    with pytest.raises(runtime.DivergenceError, match=r"image autoencoder diverged at step \d+.*ae_lr=1000000"):
        image_ae.train_autoencoder(x, y, channels=(4, 8, 8), latent_channels=2, epochs=3, batch_size=16, lr=1e6)
    assert not (config.artifacts_dir()).exists() or not any(config.artifacts_dir().iterdir())   # nothing saved

"""Tests of helpers.denoisers: time embedding, MLP denoiser shapes and conditioning."""

import pytest
import torch

from helpers.denoisers import MLPDenoiser, SinusoidalTimeEmbedding


def test_time_embedding_shape_and_distinct():
    emb = SinusoidalTimeEmbedding(16)
    e = emb(torch.tensor([0, 1, 499]))
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.zeros(8)) and torch.allclose(e[0, 8:], torch.ones(8))
    assert not torch.allclose(e[1], e[2])
    with pytest.raises(ValueError, match="even"):
        SinusoidalTimeEmbedding(15)


def test_zero_init_output_and_shapes():
    m = MLPDenoiser(12, hidden=32, n_blocks=2, time_dim=16)
    x = torch.randn(5, 12)
    out = m(x, torch.randint(0, 100, (5,)))
    assert out.shape == (5, 12) and torch.all(out == 0)
    # scalar t broadcasts; (B, ...) inputs are flattened and reshaped back
    m2 = MLPDenoiser(12, hidden=32, n_blocks=1, time_dim=16)
    assert m2(torch.randn(2, 3, 2, 2), torch.tensor(3)).shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="12 features"):
        m(torch.randn(2, 10), torch.zeros(2, dtype=torch.long))


def test_unconditional_rejects_condition():
    m = MLPDenoiser(4, hidden=8, n_blocks=1, time_dim=8)
    with pytest.raises(ValueError, match="unconditional"):
        m(torch.randn(2, 4), torch.zeros(2, dtype=torch.long), cond=torch.zeros(2))
    with pytest.raises(ValueError, match="cond_kind"):
        MLPDenoiser(4, cond_kind="text")
    with pytest.raises(ValueError, match="n_classes"):
        MLPDenoiser(4, cond_kind="class")


@pytest.mark.parametrize("kind", ["scalar", "class"])
def test_condition_changes_output_and_drop_uses_null(kind):
    torch.manual_seed(0)
    m = MLPDenoiser(6, hidden=16, n_blocks=2, time_dim=8, cond_kind=kind,
                    n_classes=3 if kind == "class" else None)
    torch.nn.init.normal_(m.out.weight, std=0.3)
    if kind == "scalar":
        torch.nn.init.normal_(m.null_embed, std=1.0)
        c = torch.tensor([1.0, -1.0, 1.0, 2.0])
    else:
        c = torch.tensor([0, 1, 0, 2])
    x = torch.randn(1, 6).expand(4, 6)
    t = torch.full((4,), 7)
    with torch.no_grad():
        out = m(x, t, cond=c)
        null = m(x, t, cond=None)
        drop = m(x, t, cond=c, drop_cond=torch.tensor([True, False, False, True]))
    assert torch.allclose(out[0], out[2]) and not torch.allclose(out[0], out[1])
    assert torch.allclose(null[0], null[1])
    assert not torch.allclose(out[1], null[1])
    assert torch.allclose(drop[0], null[0]) and torch.allclose(drop[3], null[3])
    assert torch.allclose(drop[1], out[1]) and torch.allclose(drop[2], out[2])


def test_input_skip_starts_at_zero_and_passes_input_through():
    m = MLPDenoiser(20, hidden=4, n_blocks=1, time_dim=8, input_skip=True)
    x, t = torch.randn(3, 20), torch.tensor([0, 5, 9])
    assert torch.all(m(x, t) == 0)                      # zero-initialised, like the output layer
    torch.nn.init.constant_(m.skip_gain.bias, 2.0)      # g(t) = 2
    assert torch.allclose(m(x, t), 2.0 * x)
    assert m.config["input_skip"] is True
    assert "input_skip" not in MLPDenoiser(20, hidden=4).config   # old files keep loading

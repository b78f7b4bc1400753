"""Classifiers: specs, the pure forward pass, fast training, evaluating many weight vectors."""

import pytest
import torch
import torch.nn.functional as F

from helpers import classifiers as C
from helpers import weights as W



SMALL = {"arch": "cnn", "in_channels": 1, "image_size": 12, "channels": [4, 6],
         "kernel_size": 3, "stride": 1, "pool": True, "hidden": [8], "n_classes": 3}


def _accuracy(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def _toy_data(n=384, seed=0, size=12):
    """Images whose class is the quadrant holding a bright blob (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, size, size, generator=g)
    half = size // 2
    for c, (r, k) in enumerate([(0, 0), (0, half), (half, 0)]):
        x[y == c, :, r:r + half, k:k + half] += 1.5
    return x, y


@pytest.mark.parametrize("dataset,arch", [("mnist", "cnn"), ("mnist", "mlp"), ("fashion_mnist", "cnn"),
                                          ("cifar10", "cnn"), ("cifar10", "mlp")])
def test_default_specs_build_and_count(dataset, arch):
    spec = C.default_spec(dataset, arch)
    model = C.build_model(spec)
    n = sum(p.numel() for p in model.parameters())
    assert n == C.count_params(spec)
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in C.param_shapes(spec)]
    c, s = spec["in_channels"], spec["image_size"]
    assert model(torch.zeros(2, c, s, s)).shape == (2, spec["n_classes"])


def test_default_mnist_cnn_size_is_in_range():
    assert 5_000 <= C.count_params(C.default_spec("mnist")) <= 25_000


def test_bad_specs_fail_clearly():
    with pytest.raises(ValueError, match="unknown arch"):
        C.param_shapes({**SMALL, "arch": "resnet"})
    with pytest.raises(ValueError, match="kernel_size"):
        C.param_shapes({**SMALL, "kernel_size": [3, 3, 3]})
    with pytest.raises(ValueError, match="unknown dataset"):
        C.default_spec("imagenet")


def test_seeded_build_is_deterministic():
    a, b = C.build_model(SMALL, seed=3), C.build_model(SMALL, seed=3)
    assert torch.equal(W.flatten(a.state_dict()), W.flatten(b.state_dict()))
    assert not torch.equal(W.flatten(a.state_dict()), W.flatten(C.build_model(SMALL, seed=4).state_dict()))


def test_short_training_lowers_the_loss():
    x, y = _toy_data()
    model = C.build_model(SMALL, seed=0)
    before = F.cross_entropy(model(x), y).item()
    losses = C.train_epochs(model, x, y, epochs=4, batch_size=32, lr=1e-2,
                            generator=torch.Generator().manual_seed(0))
    assert len(losses) == 4 * (384 // 32)
    after = F.cross_entropy(model(x), y).item()
    assert after < 0.5 * before
    assert _accuracy(model, x, y) > 80


def test_stacked_training_equals_independent_training():
    """K networks trained together follow exactly the K separate Adam runs."""
    x, y = _toy_data(n=128)
    seeds = [0, 1]
    params = C.init_stacked(SMALL, seeds)
    gens = [torch.Generator().manual_seed(10 + s) for s in seeds]
    hist, _ = C.train_stacked(params, SMALL, x, y, epochs=1, batch_size=32, lr=1e-2, generators=gens)
    assert hist.shape == (4, 2)
    for k, s in enumerate(seeds):
        model = C.build_model(SMALL, seed=s)
        losses = C.train_epochs(model, x, y, epochs=1, batch_size=32, lr=1e-2,
                                generator=torch.Generator().manual_seed(10 + s))
        torch.testing.assert_close(hist[:, k], torch.tensor(losses), atol=1e-4, rtol=1e-4)
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name][k].detach(), p.detach(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dataset,arch", [("mnist", "cnn"), ("cifar10", "cnn"), ("cifar10", "mlp")])
@pytest.mark.parametrize("shared", [False, True])
def test_stacked_forward_equals_each_network_alone(dataset, arch, shared):
    """The grouped channels-last forward of K networks gives each network's own logits
    (3-channel images check that channel k*C + c belongs to network k)."""
    spec = C.default_spec(dataset, arch)
    c, size = spec["in_channels"], spec["image_size"]
    params = C.init_stacked(spec, [0, 1, 2])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, c, size, size, generator=g) if shared else torch.randn(3, 5, c, size, size, generator=g)
    logits = C.stacked_forward(params, x, spec, shared_input=shared)
    assert logits.shape == (3, 5, spec["n_classes"])
    for k in range(3):
        alone = C.forward({n: p[k] for n, p in params.items()}, x if shared else x[k], spec)
        torch.testing.assert_close(logits[k], alone, atol=1e-5, rtol=1e-5)
    assert (logits[0] - logits[1]).abs().max() > 1e-3       # different networks, different logits


@pytest.mark.parametrize("schedule,shift,chunk", [("constant", 0, None), ("linear", 1, 2)])
def test_batched_trainer_matches_separate_runs_tightly(schedule, shift, chunk):
    """K = 5 networks stepped together (own init, own data order, own augmentation shifts,
    a one-cycle learning rate) equal 5 separate runs to float rounding, over 2 epochs."""
    x, y = _toy_data(n=160)
    seeds = [3, 4, 5, 6, 7]
    kw = dict(epochs=2, batch_size=16, lr=2e-2, lr_schedule=schedule, warmup=0.2, augment_shift=shift)
    params = C.init_stacked(SMALL, seeds)
    hist, _ = C.train_stacked(params, SMALL, x, y, generators=[torch.Generator().manual_seed(s) for s in seeds],
                              chunk=chunk, **kw)
    assert hist.shape == (20, 5)
    for k, s in enumerate(seeds):
        model = C.build_model(SMALL, seed=s)
        losses = C.train_epochs(model, x, y, generator=torch.Generator().manual_seed(s), **kw)
        torch.testing.assert_close(hist[:, k], torch.tensor(losses), atol=2e-5, rtol=2e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name][k].detach(), p.detach(), atol=2e-5, rtol=1e-4)
    # the networks really differ (own init and order), so the comparison is not vacuous
    assert (params["fc0.weight"][0] - params["fc0.weight"][1]).abs().max() > 1e-2


def test_lr_schedules():
    assert [C.lr_factor(t, 10, "constant", warmup=0.2) for t in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert C.lr_factor(2, 10, "linear", warmup=0.2) == 1.0
    assert C.lr_factor(6, 10, "linear", warmup=0.2) == pytest.approx(0.5)
    assert C.lr_factor(6, 10, "cosine", warmup=0.2) == pytest.approx(0.5)
    assert C.lr_factor(9, 10, "cosine") < 0.05
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'; expected one of constant, cosine, linear"):
        C.lr_factor(0, 10, "step")


def test_batched_trainer_needs_one_generator_per_network():
    x, y = _toy_data(n=64)
    params = C.init_stacked(SMALL, [0, 1, 2])
    with pytest.raises(ValueError, match=r"expected one generator per network \(3\), got 2"):
        C.train_stacked(params, SMALL, x, y, generators=[torch.Generator(), torch.Generator()])


def test_evaluate_vectors_equals_per_model_evaluate():
    x, y = _toy_data(n=300, seed=1)
    models = [C.build_model(SMALL, seed=s) for s in range(3)]
    C.train_epochs(models[0], x, y, epochs=2, batch_size=32, lr=1e-2)
    vectors = torch.stack([W.flatten(m.state_dict(), SMALL) for m in models])
    accs = C.evaluate_vectors(vectors, SMALL, x, y, batch_size=128)
    expected = torch.tensor([_accuracy(m, x, y) for m in models])
    torch.testing.assert_close(accs, expected.float())
    preds = C.predict_vectors(vectors, SMALL, x, batch_size=128)
    assert preds.dtype == torch.long and preds.shape == (3, 300)
    assert torch.equal(preds[1], models[1](x).argmax(1))


def test_evaluate_vectors_rejects_wrong_length():
    x, y = _toy_data(n=10)
    with pytest.raises(ValueError, match=r"expected D=\d+ parameters"):
        C.evaluate_vectors(torch.zeros(2, 7), SMALL, x, y)


def test_random_shift_moves_pixels_within_bounds():
    x = torch.zeros(5, 1, 8, 8)
    x[:, :, 3, 3] = 1.0
    out = C.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.sum((1, 2, 3)), torch.ones(5))     # the pixel is kept, only moved
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert ((rows - 3).abs() <= 2).all() and ((cols - 3).abs() <= 2).all()

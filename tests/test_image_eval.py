"""Offline image metrics: Fréchet distance, nearest neighbours, judge CNN and its augmentations, linear probe."""

import pytest
import torch

from helpers import image_eval


def test_frechet_distance_zero_for_same_set_positive_for_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=g)
    assert image_eval.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean shifted by 2 in one coordinate: FD ~ 4
    assert image_eval.frechet_distance(a, a + torch.tensor([2.0, 0, 0, 0])) == pytest.approx(4.0, rel=1e-6)
    assert image_eval.frechet_distance(a, 3 * a) > 1.0


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match=r"same F; got \(5, 3\) and \(5, 4\)"):
        image_eval.frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))


def test_nearest_neighbour_finds_exact_copy():
    ref = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    d, j = image_eval.nearest_neighbours(ref[[3, 7]].float() / 255, ref, batch_size=1)
    assert j.tolist() == [3, 7] and d.max().item() < 1e-3
    d2, _ = image_eval.nearest_neighbours(torch.ones(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    assert d2.item() == pytest.approx(1.0)  # RMS distance in [0, 1] units


def test_classifier_shapes_and_augmentation():
    model = image_eval.CatDogCNN((4, 8, 8))
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    assert model(x).shape == (6, 2) and model.features(x).shape == (6, 8)
    aug = image_eval.random_shift_flip(x.float() / 255, 4, torch.Generator().manual_seed(0))
    assert aug.shape == x.shape and not torch.equal(aug, x.float() / 255)
    probs, feats = image_eval.predict(model, x, batch_size=4)
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    assert feats.shape == (6, 8)


def test_random_blur_keeps_shape_and_smooths():
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = image_eval.random_blur(x, 0.5, torch.Generator().manual_seed(1))
    changed = (out != x).flatten(1).any(1)
    assert out.shape == x.shape and 5 < changed.sum() < 35
    # a blurred image has smaller differences between neighbouring pixels
    diff = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert diff(out[changed]) < diff(x[changed])
    assert image_eval.random_blur(x, 0.0) is x


def test_trained_classifier_is_cached_and_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    # bright images are class 1, dark ones class 0: easy to learn
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 32)
    x = (torch.rand(64, 3, 32, 32, generator=g) * 80 + 160 * y[:, None, None, None]).to(torch.uint8)
    key = {"what": "test"}
    m1 = image_eval.cached_classifier("catdog_classifier", key, x, y, (4, 8, 8), 6, 16, 1e-2, seed=0, blur=0.0)
    m2 = image_eval.cached_classifier("catdog_classifier", key, x, y, (4, 8, 8), 6, 16, 1e-2, seed=0, blur=0.0)
    assert len(list(tmp_path.glob("catdog_classifier-*.safetensors"))) == 1
    torch.testing.assert_close(m1.state_dict(), m2.state_dict(), rtol=0, atol=0)
    assert image_eval.accuracy(m1, x, y) > 90


def test_linear_probe_separable_codes():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 50)
    z = torch.randn(100, 5, generator=g) + 3 * y[:, None]
    assert image_eval.linear_probe_accuracy(z, y, z, y) == 100.0


def test_evaluate_generated_counts_consistency():
    class Judge(image_eval.CatDogCNN):
        def features(self, x):  # mean brightness decides the class
            m = x.float().mean(dim=(1, 2, 3))
            return torch.stack([m, -m], 1)

    judge = Judge((2, 2, 2))
    with torch.no_grad():
        judge.fc.weight.copy_(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]))
        judge.fc.bias.copy_(torch.tensor([5.0, -5.0]))
    images = torch.cat([torch.zeros(3, 3, 4, 4), torch.ones(1, 3, 4, 4), torch.ones(4, 3, 4, 4)])
    labels = torch.tensor([0] * 4 + [1] * 4)
    out = image_eval.evaluate_generated(judge, images, labels, judge.features(images))
    assert out["class_consistency"] == pytest.approx(87.5)
    assert out["class_consistency_0"] == pytest.approx(75.0) and out["class_consistency_1"] == pytest.approx(100.0)
    assert out["feature_fd"] == pytest.approx(0.0, abs=1e-6)


def test_tile_layout():
    imgs = torch.rand(6, 3, 4, 4)
    canvas = image_eval.tile(imgs, nrow=4, pad=1, scale=2)
    assert canvas.shape == (2 * (2 * 5 + 1), 2 * (4 * 5 + 1), 3) and canvas.dtype.name == "uint8"

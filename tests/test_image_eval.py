"""Offline metrics for generated images, and the frames/slider/GIF plumbing of notebook 04."""

import numpy as np
import pytest
import torch

from helpers import animation, image_eval


def test_frechet_distance_zero_for_same_set_positive_for_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 8, generator=g)
    assert image_eval.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # a mean shift of 1 in every one of 8 dimensions adds ||mu1 - mu2||^2 = 8
    assert image_eval.frechet_distance(a, a + 1.0) == pytest.approx(8.0, rel=1e-6)
    b = torch.randn(500, 8, generator=g) * 2
    assert image_eval.frechet_distance(a, b) > 1.0


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="same F"):
        image_eval.frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))


def test_nearest_neighbour_finds_exact_copy():
    ref = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    q = torch.cat([ref[17:18].float() / 255.0, torch.rand(2, 3, 8, 8)])
    d, idx = image_eval.nearest_neighbours(q, ref, batch_size=2)
    assert idx[0].item() == 17
    assert d[0].item() == pytest.approx(0.0, abs=1e-3)
    assert torch.all(d[1:] > 0.05)


def test_classifier_shapes_and_augmentation():
    model = image_eval.CatDogCNN((4, 8, 8))
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    probs, feats = image_eval.predict(model, x)
    assert probs.shape == (6, 2) and feats.shape == (6, 8)
    assert torch.allclose(probs.sum(1), torch.ones(6))
    aug = image_eval.random_shift_flip(x.float(), 4, torch.Generator().manual_seed(0))
    assert aug.shape == x.shape


def test_linear_probe_separable_codes():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1] * 100)
    z = torch.randn(200, 5, generator=g) + 4.0 * y[:, None]
    assert image_eval.linear_probe_accuracy(z, y, z, y) > 95


def test_evaluate_generated_counts_consistency():
    model = image_eval.CatDogCNN((4, 8, 8))
    x = torch.rand(10, 3, 32, 32)
    pred = image_eval.predict(model, x)[0].argmax(1)
    res = image_eval.evaluate_generated(model, x, pred, image_eval.predict(model, x)[1])
    assert res["class_consistency"] == pytest.approx(100.0)
    assert res["feature_fd"] == pytest.approx(0.0, abs=1e-6)


def _fake_trajectory(n_steps=5, n=4, d=6):
    g = torch.Generator().manual_seed(0)
    traj = [{"t": t, "x_t": torch.randn(n, d, generator=g), "x0_pred": torch.randn(n, d, generator=g)}
            for t in range(n_steps - 1, -1, -1)]
    return traj + [{"t": -1, "x_t": traj[-1]["x0_pred"], "x0_pred": traj[-1]["x0_pred"]}]


def _decode(z):
    # a stand-in decoder: codes (n, d) -> images (n, 3, 8, 8) in [0, 1]
    return torch.sigmoid(z[:, :3, None, None].expand(-1, 3, 8, 8))


def test_slider_and_gifs_have_all_frames(tmp_path):
    traj = _fake_trajectory()
    frames, captions = image_eval.trajectory_frames(_decode, traj, "x_t", nrow=2)
    assert len(frames) == len(traj) and captions[-1].endswith("final sample")
    path = animation.write_gif(frames, tmp_path / "run.gif")
    assert animation.gif_frame_count(path) == len(frames)
    pframes, pcaps = image_eval.paired_frames(_decode, traj, nrow=4)
    path2 = animation.write_gif(pframes, tmp_path / "pair.gif")
    assert animation.gif_frame_count(path2) == len(pframes)

    slider = animation.frame_slider(pframes, pcaps)
    first_label, first_image = slider.label.value, slider.image.value
    slider.slider.value = len(pframes) - 1
    assert slider.label.value != first_label and "final sample" in slider.label.value
    assert slider.image.value != first_image


def test_tile_layout():
    imgs = torch.rand(6, 3, 4, 4)
    t = image_eval.tile(imgs, nrow=3, pad=1, scale=2)
    assert t.dtype == np.uint8 and t.shape == (2 * (2 * 5 + 1), 2 * (3 * 5 + 1), 3)


def test_random_blur_keeps_shape_and_smooths():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g)
    assert torch.equal(image_eval.random_blur(x, 0.0), x)
    b = image_eval.random_blur(x, 1.0, g)
    assert b.shape == x.shape
    # every image blurred: neighbouring pixels differ less than in the noise input
    assert (b[..., 1:] - b[..., :-1]).abs().mean() < 0.5 * (x[..., 1:] - x[..., :-1]).abs().mean()


def test_reconstruction_figure_rows_per_model():
    import matplotlib.pyplot as plt

    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    fig = image_eval.reconstruction_figure(x, {"flat 128": torch.rand(4, 3, 32, 32),
                                               "spatial": torch.rand(4, 3, 32, 32)}, 0.001)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["test images", "flat 128", "spatial"]
    assert "30.0 dB" in ax.get_title()
    assert ax.get_images()[0].get_array().shape[0] == 3 * 33 + 1
    plt.close(fig)
    # a single tensor still works (the first version's call)
    fig = image_eval.reconstruction_figure(x, torch.rand(4, 3, 32, 32))
    assert len(fig.axes[0].get_yticklabels()) == 2
    plt.close(fig)


def test_neighbours_figure_prints_every_distance_below_the_images():
    import matplotlib.pyplot as plt

    d = torch.tensor([0.1234, 0.2, 0.3])
    fig = image_eval.neighbours_figure(torch.rand(3, 3, 32, 32), torch.randint(0, 256, (3, 3, 32, 32),
                                                                               dtype=torch.uint8), d)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["0.123", "0.200", "0.300"]
    # the labels sit below their axes (y < 0 in axes coordinates), not over the images
    assert all(t.get_position()[1] < 0 for ax in fig.axes for t in ax.texts)
    plt.close(fig)


def test_denoising_path_figure_has_no_blank_band():
    import matplotlib.pyplot as plt

    rows = [torch.rand(8, 3, 32, 32) for _ in range(2)]
    fig = image_eval.denoising_path_figure(rows, [f"s{i}" for i in range(8)], np.random.randn(50, 2),
                                           np.array([0, 1] * 25), [np.random.randn(9, 2)] * 2, [0, 1])
    thumbs = fig.axes[:16]
    h = fig.get_figheight()
    # thumbnails are at least an inch tall and together fill most of the figure's height
    heights = [ax.get_position().height * h for ax in thumbs]
    assert min(heights) > 1.0
    covered = (max(ax.get_position().y1 for ax in thumbs) - min(ax.get_position().y0 for ax in thumbs)) * h
    assert covered > 0.7 * h
    assert [ax.get_ylabel() for ax in thumbs[::8]] == ["cat", "dog"]
    plt.close(fig)

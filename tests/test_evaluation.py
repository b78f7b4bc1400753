"""Tests for helpers.evaluation: novelty (IoU, distances), baselines, the frontier, fine-tuning."""


import pytest
import torch

from helpers import evaluation as ev

# ---------------------------------------------------------------------------
# Error sets and IoU
# ---------------------------------------------------------------------------

def test_error_sets_marks_wrong_predictions():
    y = torch.tensor([0, 1, 2, 3])
    preds = torch.tensor([[0, 1, 2, 3], [1, 1, 0, 3]])
    err = ev.error_sets(preds, y)
    assert err.dtype == torch.bool
    assert err.tolist() == [[False] * 4, [True, False, True, False]]

def test_error_sets_rejects_wrong_length():
    with pytest.raises(ValueError, match="3 samples but there are 4 labels"):
        ev.error_sets(torch.zeros(2, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long))

def test_iou_identical_is_one_disjoint_is_zero():
    a = torch.tensor([[1, 1, 0, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 0, 1, 1, 0]], dtype=torch.bool)
    assert ev.iou_matrix(a, a).item() == 1.0
    assert ev.iou_matrix(a, b).item() == 0.0

def test_iou_known_example_and_shape():
    # E_a = {0,1,2}, E_b = {1,2,3,4}: |∩| = 2, |∪| = 5
    a = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    iou = ev.iou_matrix(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0].item() == pytest.approx(2 / 5)
    assert iou[0, 1].item() == 1.0
    assert iou[1].tolist() == [0.0, 0.0, 1.0]

def test_iou_matches_loop_on_random_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(7, 50, generator=g) < 0.3
    b = torch.rand(5, 50, generator=g) < 0.3
    iou = ev.iou_matrix(a, b)
    for i in range(7):
        for j in range(5):
            inter = (a[i] & b[j]).sum().item()
            union = (a[i] | b[j]).sum().item()
            assert iou[i, j].item() == pytest.approx(inter / union if union else 1.0)

def test_max_similarity_picks_the_max_and_respects_exclude():
    gen = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    train = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert ev.max_similarity(gen, train).tolist() == [1.0]
    exclude = torch.tensor([[False, False, True]])
    assert ev.max_similarity(gen, train, exclude=exclude).tolist() == [0.5]

def test_mean_pairwise_iou_skips_the_diagonal():
    err = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    # pairs: (0,1) 1/3, (0,2) 1, (1,2) 1/3
    assert ev.mean_pairwise_iou(err) == pytest.approx((1 / 3 + 1 + 1 / 3) / 3)
    with pytest.raises(ValueError):
        ev.mean_pairwise_iou(err[:1])

def _nearest(v, train, norm=None):
    """Each row's RMS distance to its nearest training row (in normalised units with ``norm``)."""
    f = (lambda w: w) if norm is None else norm.normalize
    return ev.pairwise_rms_distance(f(v), f(train)).min(dim=1).values

def test_pairwise_rms_distance_is_rms_and_exact_for_copies():
    train = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    v = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    d = ev.pairwise_rms_distance(v, train)
    assert d.shape == (2, 2) and d.flatten().tolist() == pytest.approx([1.0, 1.0, 0.0, 2.0])
    w = torch.randn(3, 1000) * 100
    assert torch.all(torch.diagonal(ev.pairwise_rms_distance(w, w)) == 0)   # no |a|^2 + |b|^2 - 2ab rounding

class _ScaleNormalizer:
    """A stand-in normaliser: z = (w - 1) / 10."""

    def normalize(self, w):
        return (w - 1.0) / 10.0

    def denormalize(self, z):
        return z * 10.0 + 1.0

# ---------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------

def _train(m=20, d=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g) * torch.linspace(0.1, 2.0, d) + torch.linspace(-1, 1, d)

def test_noise_baseline_sigma_zero_returns_checkpoints():
    train = _train()
    out = ev.noise_baseline(train, 12, 0.0, _ScaleNormalizer(), torch.Generator().manual_seed(1))
    assert out.shape == (12, train.shape[1])
    d = _nearest(out, train)
    assert d.max().item() < 1e-5

def test_noise_baseline_noise_has_scale_sigma_in_normalised_units():
    train = _train()
    norm = _ScaleNormalizer()
    out = ev.noise_baseline(train, 200, 0.1, norm, torch.Generator().manual_seed(2))
    d = _nearest(out, train, norm)
    assert d.mean().item() == pytest.approx(0.1, rel=0.15)

def test_baselines_are_deterministic_given_generator():
    train = _train()
    for fn in (lambda g: ev.noise_baseline(train, 5, 0.1, None, g),
               lambda g: ev.soup_baseline(train, 5, 4, g),
               lambda g: ev.gaussian_baseline(train, 5, g)):
        a = fn(torch.Generator().manual_seed(3))
        b = fn(torch.Generator().manual_seed(3))
        assert torch.equal(a, b)

def test_soup_of_identical_checkpoints_is_that_checkpoint():
    w = torch.randn(1, 25)
    train = w.repeat(30, 1)
    out = ev.soup_baseline(train, 4, k=16, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 25)
    assert torch.allclose(out, w.expand(4, -1), atol=1e-6)

def test_soup_averages_k_distinct_checkpoints():
    # checkpoint i is the one-hot vector e_i: a soup of k distinct ones has k entries equal to 1/k
    train = torch.eye(10)
    out = ev.soup_baseline(train, 50, k=3, generator=torch.Generator().manual_seed(0))
    assert ((out > 0).sum(1) == 3).all()
    assert torch.allclose(out[out > 0], torch.full(((out > 0).sum().item(),), 1 / 3))
    # k >= M: every soup is the average of all checkpoints
    out = ev.soup_baseline(train, 4, k=16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, torch.full_like(out, 0.1))

def test_gaussian_baseline_matches_mean_and_std():
    train = _train(m=50, d=8)
    out = ev.gaussian_baseline(train, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(out.mean(0), train.mean(0), atol=0.05)
    assert torch.allclose(out.std(0), train.std(0), rtol=0.03)

# ---------------------------------------------------------------------------
# Accuracy summaries
# ---------------------------------------------------------------------------

def test_summarize_accuracies():
    s = ev.summarize_accuracies(torch.tensor([90.0, 95.0, 97.0, 99.0]))
    assert s["mean"] == pytest.approx(95.25)
    assert s["max"] == 99.0 and s["min"] == 90.0 and s["n"] == 4
    assert s["median"] == pytest.approx(96.0)     # the true median: mean of the two middle values
    assert s["frac_above_95"] == 0.5              # 95.0 itself is not above 95 %
    assert ev.summarize_accuracies([90.0, 95.0, 97.0])["median"] == 95.0
    with pytest.raises(ValueError, match="expected at least one accuracy, found none"):
        ev.summarize_accuracies([])

# ---------------------------------------------------------------------------
# With real (tiny) networks of helpers.classifiers
# ---------------------------------------------------------------------------

TINY = {"arch": "mlp", "in_channels": 1, "image_size": 4, "hidden": [6], "n_classes": 3}

def _tiny_problem(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    # three classes from two linear features of the image
    f = x.flatten(1)
    y = (f[:, :8].sum(1) > 0).long() + (f[:, 8:].sum(1) > 1).long()
    return x, y

def _tiny_vectors(k, seed=0):
    from helpers import classifiers, weights

    return torch.stack([weights.flatten(classifiers.build_model(TINY, seed=seed + i).state_dict()) for i in range(k)])

def test_evaluate_methods_rows():
    x, y = _tiny_problem()
    train = _tiny_vectors(5)
    near = train + 1e-7 * torch.randn(train.shape, generator=torch.Generator().manual_seed(0))
    rows = ev.evaluate_methods({"checkpoints": train, "near copies": near, "copies": train[[0, 2]].clone(),
                                "other": _tiny_vectors(4, 100)}, train, TINY, x, y)
    by = {r["name"]: r for r in rows}
    assert by["near copies"]["max_iou"] == pytest.approx(1.0)
    assert 0 < by["near copies"]["nearest_dist"] < 1e-5 and by["near copies"]["copies"] == 0
    # exact copies of checkpoints are not hidden: IoU 1, distance 0, counted
    assert by["copies"]["max_iou"] == 1.0 and by["copies"]["nearest_dist"] == 0.0
    assert by["copies"]["copies"] == 2 and by["checkpoints"]["copies"] == 0
    assert by["checkpoints"]["nearest_dist"] > 1e-3   # compared with the *other* checkpoints
    assert by["checkpoints"]["max_iou"] < 1.0
    assert by["other"]["n"] == 4 and by["other"]["accs"].shape == (4,)
    with pytest.raises(ValueError, match="expected"):
        ev.evaluate_methods({"bad": train[:, :-1]}, train, TINY, x, y)

def test_finetune_curves_loss_falls_and_shares_batches():
    x, y = _tiny_problem(400)
    start = _tiny_vectors(1)[0]
    hist = ev.finetune_curves({"a": start, "b": start.clone()}, TINY, (x, y, x, y), steps=60, lr=1e-2,
                              batch_size=64, eval_every=20, progress=False)
    a, b = hist["a"], hist["b"]
    assert a["eval_steps"] == [0, 20, 40, 60] and len(a["test_acc"]) == 4 and len(a["loss"]) == 60
    assert sum(a["loss"][-10:]) < sum(a["loss"][:10])
    assert a["loss"] == b["loss"]          # same start, same batches: identical curves

# ---------------------------------------------------------------------------
# The same evaluation on a zoo of another dataset, built by notebook 01's code
# ---------------------------------------------------------------------------

def test_evaluation_on_a_fashion_mnist_zoo_in_smoke(tmp_path, monkeypatch):
    """Notebook 05's pipeline on a Fashion-MNIST zoo built by notebooks 01-03's code in the smoke preset."""
    from helpers import classifiers, config, generation, vae, weights

    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    _fashion_pipeline(ev, classifiers, config, generation, vae, weights)

def _fashion_pipeline(ev, classifiers, config, generation, vae, weights):
    cfg = config.get_config("evaluation", "smoke", dataset="fashion_mnist")
    zoo_cfg = config.get_config("zoo", cfg.zoo_preset, dataset=cfg.dataset)
    vae_cfg = config.get_config("vae", cfg.vae_preset)
    diffusion_cfg = config.get_config("weight_diffusion", cfg.weight_diffusion_preset)
    zoo = weights.build_or_load_zoo(zoo_cfg, verbose=False)
    assert zoo.config["dataset"] == "fashion_mnist"
    vae_model, _ = vae.build_or_load_vae(zoo_cfg, vae_cfg)
    latent_dm, latent_info = generation.build_or_load_weight_diffusion(zoo_cfg, vae_cfg, diffusion_cfg)
    x, y = classifiers.load_split(cfg.dataset, "test", n=cfg.n_test)
    train = zoo.vectors
    g = torch.Generator().manual_seed(cfg.seed)
    n = 4
    methods = {"generated": generation.generate_networks(n, latent_dm, vae_model, latent_info,
                                                         steps=diffusion_cfg.ddim_steps, seed=cfg.seed),
               "checkpoints": train,
               "noise": ev.noise_baseline(train, n, cfg.noise_sigma, vae_model.normalizer, g),
               "soup": ev.soup_baseline(train, n, cfg.soup_size, g),
               "gaussian": ev.gaussian_baseline(train, n, g),
               "vae_prior": vae.sample_prior(vae_model, n, g)}
    rows = ev.evaluate_methods(methods, train, zoo.spec, x, y, vae_model.normalizer)
    by = {r["name"]: r for r in rows}
    assert list(by) == list(methods) and by["generated"]["n"] == n
    # the checkpoints are trained Fashion-MNIST classifiers, re-measured here on the same test images
    assert by["checkpoints"]["mean"] > 50.0
    assert by["checkpoints"]["mean"] == pytest.approx(
        classifiers.evaluate_vectors(train, zoo.spec, x, y).mean().item(), abs=1e-3)
    # noise of sigma in normalised units sits about sigma away from its checkpoint
    assert by["noise"]["nearest_dist"] == pytest.approx(cfg.noise_sigma, rel=0.1)
    assert all(0.0 <= r["max_iou"] <= 1.0 for r in rows)

def test_curve_accuracy_at_interpolates_and_clamps():
    curve = [{"value": 0.3, "max_iou": 0.2, "mean_acc": 80.0}, {"value": 0.02, "max_iou": 0.9, "mean_acc": 98.0},
             {"value": 0.1, "max_iou": 0.6, "mean_acc": 96.0}]
    assert ev.curve_accuracy_at(curve, 0.4) == pytest.approx(88.0)
    assert ev.curve_accuracy_at(curve, 0.75) == pytest.approx(97.0)
    assert ev.curve_accuracy_at(curve, 0.05) == 80.0 and ev.curve_accuracy_at(curve, 0.99) == 98.0
    assert ev.frontier_margin(curve, 97.5, 0.6) == pytest.approx(1.5)
    assert ev.frontier_margin(curve, 85.0, 0.4) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="at least one point"):
        ev.curve_accuracy_at([], 0.5)

def test_noise_curve_loses_accuracy_and_similarity_as_sigma_grows():
    x = torch.randn(200, 1, 6, 6)
    spec = {"arch": "mlp", "in_channels": 1, "image_size": 6, "hidden": [12], "n_classes": 3}
    from helpers import classifiers as C
    from helpers import weights as W

    teacher = W.flatten(C.build_model(spec, seed=0).state_dict())
    y = C.predict_vectors(teacher[None], spec, x)[0]
    train = teacher[None] + 0.01 * torch.randn(4, teacher.numel())
    train_err = ev.error_sets(ev.predict_labels(train, spec, x), y)
    curve = ev.baseline_curve("noise", [0.0, 1.0], train, 6, spec, x, y, train_err)
    assert [r["value"] for r in curve] == [0.0, 1.0]
    assert curve[0]["mean_acc"] > curve[1]["mean_acc"]
    assert curve[0]["max_iou"] == pytest.approx(1.0)
    soups = ev.baseline_curve("soup", [2], train, 3, spec, x, y, train_err)
    assert soups[0]["mean_acc"] > 90
    with pytest.raises(ValueError, match="unknown baseline curve 'mix'; expected 'noise', 'soup' or 'latent noise'"):
        ev.baseline_curve("mix", [1], train, 3, spec, x, y, train_err)

def test_finetune_vectors_trains_each_network_and_zero_steps_copies():
    from helpers import classifiers as C
    from helpers import weights as W

    spec = {"arch": "mlp", "in_channels": 1, "image_size": 6, "hidden": [12], "n_classes": 3}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 6, 6, generator=g)
    y = (x.flatten(1)[:, :3].argmax(1))
    v = torch.stack([W.flatten(C.build_model(spec, seed=s).state_dict()) for s in range(3)])
    assert torch.equal(ev.finetune_vectors(v, spec, x, y, steps=0), v)
    tuned = ev.finetune_vectors(v, spec, x, y, steps=40, lr=1e-2, batch_size=32)
    assert tuned.shape == v.shape
    before = C.evaluate_vectors(v, spec, x, y)
    after = C.evaluate_vectors(tuned, spec, x, y)
    assert (after > before + 10).all(), (before, after)

def _tiny_zoo():
    """A 3-class MLP teacher labels 150 random images; 5 "checkpoints" are the teacher plus small noise."""
    from helpers import classifiers as C
    from helpers import weights as W

    spec = {"arch": "mlp", "in_channels": 1, "image_size": 6, "hidden": [12], "n_classes": 3}
    x = torch.randn(150, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    teacher = W.flatten(C.build_model(spec, seed=0).state_dict())
    y = C.predict_vectors(teacher[None], spec, x)[0]
    train = teacher[None] + 0.05 * torch.randn(5, teacher.numel(), generator=torch.Generator().manual_seed(2))
    return spec, x, y, train

def test_frontier_points_curves_and_margins_fit_together():
    spec, x, y, train = _tiny_zoo()
    out = ev.frontier(train, {"copies": train[:2].clone()}, spec, x, y, sigmas=(0.0, 0.5, 2.0),
                      soup_sizes=(2, 4), n=4)
    assert [r["value"] for r in out["curves"]["noise"]] == [0.0, 0.5, 2.0]
    assert [r["value"] for r in out["curves"]["soup"]] == [2, 4]
    assert out["points"]["copies"]["max_iou"] == pytest.approx(1.0)
    for name, pt in out["points"].items():
        expected = pt["mean_acc"] - ev.curve_accuracy_at(out["curves"]["noise"], pt["max_iou"])
        assert out["margins"][name] == pytest.approx(expected)

def test_latent_noise_baseline_decodes_training_latents_plus_noise_of_scale_s():
    latents = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    decode = lambda u: torch.cat([u, 2 * u], 1)              # a stand-in decoder, (n, 3) -> (n, 6)
    at_zero = ev.latent_noise_baseline(latents, 9, 0.0, decode, torch.Generator().manual_seed(1))
    assert at_zero.shape == (9, 6)
    assert _nearest(at_zero[:, :3], latents).max().item() < 1e-6   # copies of latents
    noisy = ev.latent_noise_baseline(latents, 400, 0.3, decode, torch.Generator().manual_seed(1))
    again = ev.latent_noise_baseline(latents, 400, 0.3, decode, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)
    # the added noise has scale s: RMS distance to the latent it started from is about 0.3
    assert _nearest(noisy[:, :3], latents).mean().item() == pytest.approx(0.3, rel=0.25)
    with pytest.raises(ValueError, match=r"non-empty \(M, L\).*got shape \(3,\)"):
        ev.latent_noise_baseline(torch.zeros(3), 2, 0.1, decode)

def test_frontier_adds_the_latent_noise_curve_and_its_margins():
    spec, x, y, train = _tiny_zoo()
    # a linear "autoencoder": latents are the first 4 principal directions of the checkpoints
    mean = train.mean(0)
    basis = torch.linalg.svd(train - mean, full_matrices=False)[2][:4]
    latents, decode = (train - mean) @ basis.T, (lambda u: mean + u @ basis)
    out = ev.frontier(train, {"copies": train[:2].clone()}, spec, x, y, sigmas=(0.0, 0.5), soup_sizes=(2,),
                      n=4, latent=(latents, decode), latent_scales=(0.0, 0.05, 1.0))
    curve = out["curves"]["latent noise"]
    assert [r["value"] for r in curve] == [0.0, 0.05, 1.0]
    assert curve[0]["max_iou"] == pytest.approx(1.0)         # s = 0 decodes the checkpoints themselves
    for name, pt in out["points"].items():
        assert out["latent_margins"][name] == pytest.approx(pt["mean_acc"] - ev.curve_accuracy_at(curve, pt["max_iou"]))
    assert "latent noise" not in ev.frontier(train, {}, spec, x, y, sigmas=(0.0,), soup_sizes=(2,), n=2)["curves"]
    with pytest.raises(ValueError, match="needs latent="):
        ev.baseline_curve("latent noise", (0.1,), train, 2, spec, x, y, out["train_err"])

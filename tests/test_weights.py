"""Weights as data: flatten/unflatten, normalisation, the dataset file, alignment."""

import pytest
import torch

from helpers import artifacts
from helpers import classifiers as C
from helpers import weights as W



SPEC = C.default_spec("mnist")
MLP = {"arch": "mlp", "in_channels": 1, "image_size": 6, "hidden": [10, 7], "n_classes": 4}
SMALL_CNN = {"arch": "cnn", "in_channels": 1, "image_size": 12, "channels": [5, 6],
             "kernel_size": 3, "stride": 1, "pool": True, "hidden": [9], "n_classes": 3}


def _sd(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_flatten_unflatten_round_trip_is_exact():
    model = C.build_model(SPEC, seed=0)
    sd = _sd(model)
    v = W.flatten(sd, SPEC)
    assert v.shape == (C.count_params(SPEC),) and v.dtype == torch.float32
    back = W.unflatten(v, SPEC)
    assert list(back) == list(sd)
    for name in sd:
        assert torch.equal(back[name], sd[name])
    assert torch.equal(W.flatten(back, SPEC), v)
    m2 = W.load_into_model(v, SPEC)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(m2(x), model(x))


def test_unflatten_keeps_leading_dimensions():
    v = torch.randn(3, C.count_params(MLP))
    parts = W.unflatten(v, MLP)
    assert parts["fc0.weight"].shape == (3, 10, 36)
    assert torch.equal(W.unflatten(v[1], MLP)["fc1.bias"], parts["fc1.bias"][1])


def test_wrong_length_error_says_expected_and_found():
    d = C.count_params(SPEC)
    with pytest.raises(ValueError) as err:
        W.unflatten(torch.zeros(d - 1), SPEC)
    msg = str(err.value)
    assert f"expected D={d} parameters" in msg and f"got {d - 1}" in msg and '"arch": "cnn"' in msg


def test_wrong_architecture_error_names_the_parameter():
    other = {**SPEC, "hidden": [32]}
    sd = _sd(C.build_model(other))
    with pytest.raises(ValueError, match=r"expected parameters .*\('fc0.weight', \(24, 400\)\).*found .*\('fc0.weight', \(32, 400\)\)"):
        W.flatten(sd, SPEC)
    sd = _sd(C.build_model(SPEC))
    sd["fc9.weight"] = sd.pop("fc1.weight")
    with pytest.raises(ValueError, match=r"does not fit spec .*found .*'fc9.weight'"):
        W.flatten(sd, SPEC)


def test_normalizer_round_trip_and_statistics():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(20, C.count_params(MLP), generator=g) * 0.1 + 0.5
    norm = W.Normalizer().fit(vectors, MLP)
    z = norm.normalize(vectors)
    for part in W.unflatten(z, MLP).values():          # each tensor: mean 0, std 1
        assert abs(part.mean().item()) < 1e-4 and abs(part.std(unbiased=False).item() - 1) < 1e-4
    torch.testing.assert_close(norm.denormalize(z), vectors)
    again = W.Normalizer.from_state(norm.state())
    torch.testing.assert_close(again.denormalize(z), vectors)
    with pytest.raises(ValueError, match="fitted on D="):
        norm.normalize(torch.zeros(3))


def _dataset(n=6, spec=MLP):
    vectors = torch.randn(n, C.count_params(spec))
    metrics = [{"run_seed": i % 2, "epoch": 1.5, "step": 10 * i, "train_loss": 0.1 * i,
                "test_acc": 90.0 + i} for i in range(n)]
    return W.WeightDataset(vectors, spec, metrics, {"seed": 0, "n_runs": 2},
                           run_vectors=vectors[:2].clone(), loss_curves=torch.rand(2, 30))


def test_weight_dataset_save_load_round_trip(tmp_path):
    ds = _dataset()
    path = ds.save(tmp_path / "zoo.safetensors")
    back = W.WeightDataset.load(path)
    assert torch.equal(back.vectors, ds.vectors) and back.spec == ds.spec
    assert back.metrics == ds.metrics and back.config == ds.config
    assert torch.equal(back.run_vectors, ds.run_vectors) and torch.equal(back.loss_curves, ds.loss_curves)
    torch.testing.assert_close(back.test_acc, torch.arange(90.0, 96.0, dtype=torch.float64))
    assert back.run_seed.tolist() == [0, 1, 0, 1, 0, 1]


def test_weight_dataset_load_rejects_mismatch_and_corruption(tmp_path):
    path = _dataset().save(tmp_path / "zoo.safetensors")
    with pytest.raises(artifacts.ArtifactError, match="expected .*\"hidden\": \\[24\\]"):
        W.WeightDataset.load(path, spec=SPEC)
    # vectors of the wrong length for the stored spec
    artifacts.save_tensors(tmp_path / "bad.safetensors", {"vectors": torch.zeros(2, 5)},
                           {"format": W.FORMAT, "spec": MLP, "D": 5, "param_shapes": [], "metrics": [{}, {}]})
    with pytest.raises(artifacts.ArtifactError, match=r"expected the parameters \[\('fc0.weight'"):
        W.WeightDataset.load(tmp_path / "bad.safetensors")
    shapes = [[n, list(s)] for n, s in C.param_shapes(MLP)]
    artifacts.save_tensors(tmp_path / "bad.safetensors", {"vectors": torch.zeros(2, 5)},
                           {"format": W.FORMAT, "spec": MLP, "D": 5, "param_shapes": shapes, "metrics": [{}, {}]})
    with pytest.raises(artifacts.ArtifactError, match=rf"expected vectors of shape \(N, D={C.count_params(MLP)}\).*got \(2, 5\)"):
        W.WeightDataset.load(tmp_path / "bad.safetensors")
    raw = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(artifacts.ArtifactError, match="corrupted"):
        W.WeightDataset.load(tmp_path / "cut.safetensors")


def test_weight_dataset_rejects_wrong_shape_in_memory():
    with pytest.raises(ValueError, match=r"expected vectors of shape \(N, D="):
        W.WeightDataset(torch.zeros(3, 10), MLP)


@pytest.mark.parametrize("spec", [MLP, SMALL_CNN, SPEC])
def test_alignment_recovers_a_permuted_copy(spec):
    torch.manual_seed(0)
    model = C.build_model(spec, seed=1)
    sd = _sd(model)
    layers = W._layers(spec)
    g = torch.Generator().manual_seed(5)
    perms = [torch.randperm(sd[w].shape[0], generator=g) for w, _, _ in layers[:-1]]
    shuffled = W.permute(sd, perms, spec)
    c, s = spec["in_channels"], spec["image_size"]
    x = torch.randn(8, c, s, s)
    # a permutation does not change the function...
    torch.testing.assert_close(W.load_into_model(W.flatten(shuffled, spec), spec)(x), model(x))
    assert not torch.equal(W.flatten(shuffled, spec), W.flatten(sd, spec))
    # the flat form of the same permutation is one gather
    assert torch.equal(W.flatten(sd, spec)[W.permutation_index(spec, perms)], W.flatten(shuffled, spec))
    # ...and weight matching undoes it exactly
    found = W.weight_matching(sd, shuffled, spec)
    aligned = W.permute(shuffled, found, spec)
    assert torch.equal(W.flatten(aligned, spec), W.flatten(sd, spec))
    for p, f in zip(perms, found):
        assert torch.equal(p[f], torch.arange(len(p)))
    torch.testing.assert_close(W.load_into_model(W.flatten(aligned, spec), spec)(x), model(x))


def test_common_reference_alignment_undoes_permutations_of_one_network():
    """Permuted copies of one network (plus small noise) all land in one unit order,
    keep their function, and the iteration stops once no assignment changes."""
    base = _sd(C.build_model(SMALL_CNN, seed=2))
    g = torch.Generator().manual_seed(0)
    copies = []
    for i in range(5):
        perms = [torch.randperm(base[w].shape[0], generator=g) for w, _, _ in W._layers(SMALL_CNN)[:-1]]
        v = W.flatten(W.permute(base, perms, SMALL_CNN), SMALL_CNN)
        copies.append(v + 1e-3 * torch.randn(v.shape, generator=g))
    vectors = torch.stack(copies)
    aligned, perms, history = W.align_to_common_reference(vectors, SMALL_CNN, max_iter=10)
    assert aligned.shape == vectors.shape and len(perms) == 5
    assert history[-1] == 0 and len(history) <= 10
    # every aligned copy is within the noise of every other (one unit order)
    assert (aligned - aligned[0]).abs().max() < 1e-2
    assert (vectors - vectors[0]).abs().max() > 0.1
    x = torch.randn(6, 1, 12, 12)
    for v, a in zip(vectors, aligned):
        torch.testing.assert_close(W.load_into_model(a, SMALL_CNN)(x), W.load_into_model(v, SMALL_CNN)(x))


def test_interpolation_barriers_of_identical_pairs_are_zero():
    x = torch.randn(40, 1, 6, 6)
    a = torch.stack([W.flatten(C.build_model(MLP, seed=s).state_dict()) for s in range(3)])
    y = C.predict_vectors(a[:1], MLP, x)[0]
    out = W.interpolation_barriers(a, a, MLP, x, y)
    assert torch.equal(out["barrier"], torch.zeros(3))
    assert out["end_acc"][0] == 100.0
    with pytest.raises(ValueError, match=r"expected two \(P, D\) tensors of equal shape, got \(3, \d+\) and \(2, \d+\)"):
        W.interpolation_barriers(a, a[:2], MLP, x, y)


def test_zoo_config_kinds():
    traj = W.zoo_config("smoke")
    ms = W.zoo_config("smoke", "multiseed", n_runs=3)
    assert "kind" not in traj and ms["kind"] == "multiseed" and ms["n_runs"] == 3
    assert ms["lr_schedule"] == "linear" and ms["dataset"] == traj["dataset"]
    with pytest.raises(ValueError, match="unknown zoo kind 'seeds'; expected one of trajectory, multiseed"):
        W.zoo_config("smoke", "seeds")
    with pytest.raises(KeyError, match="unknown setting"):
        W.zoo_config("smoke", "multiseed", n_seeds=3)


def test_multiseed_zoo_builds_aligned_checkpoints(monkeypatch):
    """A tiny many-seed zoo on random data: shapes, metrics, stored permutations that map the
    unaligned end points onto the aligned last checkpoints."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 1, 12, 12, generator=g), torch.randint(0, 3, (400,), generator=g)
    monkeypatch.setattr(C, "load_split", lambda dataset, split, n=None: (x[:n], y[:n]) if n else (x, y))
    cfg = {**W.zoo_config("smoke", "multiseed"), "spec": SMALL_CNN, "n_runs": 3, "val_size": 100,
           "train_subset": None, "test_subset": 100, "batch_size": 20, "epochs": 1,
           "checkpoints_per_run": 2, "checkpoint_every": 3, "min_val_acc": 0.0, "threads": None}
    ds = W.build_zoo(cfg, verbose=False)
    assert len(ds) == 6 and ds.run_vectors.shape == (3, C.count_params(SMALL_CNN))
    assert [m["step"] for m in ds.metrics[:2]] == [12, 15] and ds.metrics[0]["phase"] == "multiseed"
    assert ds.loss_curves.shape == (3, 15)
    # the stored permutations map each unaligned end point onto its aligned last checkpoint
    for v, p, last in zip(ds.run_vectors, ds.config["perms"], ds.vectors[1::2]):
        assert torch.equal(v[W.permutation_index(SMALL_CNN, [torch.tensor(q) for q in p])], last)


def test_trajectory_zoo_pretrains_then_keeps_evenly_spaced_aligned_checkpoints(monkeypatch):
    """A tiny trajectory zoo on random data: a first phase without checkpoints, then checkpoints
    every few steps; run 0 keeps its unit order, run 1 is permuted by its stored permutation."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 1, 12, 12, generator=g), torch.randint(0, 3, (400,), generator=g)
    monkeypatch.setattr(C, "load_split", lambda dataset, split, n=None: (x[:n], y[:n]) if n else (x, y))
    cfg = {**W.zoo_config("smoke"), "spec": SMALL_CNN, "n_runs": 2, "val_size": 100, "train_subset": None,
           "test_subset": 100, "batch_size": 20, "epochs": 1, "trajectory_epochs": 1, "checkpoints_per_run": 5,
           "min_val_acc": 0.0, "threads": None}
    ds = W.build_zoo(cfg, verbose=False)
    assert len(ds) == 10 and ds.config["pretrain_steps"] == 15
    assert [m["step"] for m in ds.metrics[:5]] == [18, 21, 24, 27, 30] and ds.metrics[0]["phase"] == "trajectory"
    assert ds.loss_curves.shape == (2, 30)
    identity = [list(range(n)) for n in (5, 6, 9)]
    assert ds.config["perms"][0] == identity and ds.config["perms"][1] != identity
    with pytest.raises(ValueError, match="unknown zoo kind 'seeds'"):
        W.build_zoo({**cfg, "kind": "seeds"})

"""One model save/load (artifacts.save_model / load_model) and cache keys on training settings only."""

import json

import pytest
import torch

from helpers import artifacts, generation, runtime, vae
from test_device import VAE, WD, ZOO, _synthetic_zoo  # tests/ is on sys.path (rootdir-relative imports)


def _make(arch):
    return torch.nn.Linear(arch["n_in"], arch["n_out"])


def test_save_model_round_trip_from_a_cpu_copy(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    path = artifacts.save_model(tmp_path / "m.safetensors", model, "toy", {"n_in": 3, "n_out": 2},
                                {"hist.loss": torch.tensor([1.0, 0.5])}, {"seconds": 1.5})
    loaded, extra, meta = artifacts.load_model(path, "toy", _make, device="cpu")
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(extra["hist.loss"], torch.tensor([1.0, 0.5])) and set(extra) == {"hist.loss"}
    assert meta["kind"] == "toy" and meta["arch"] == {"n_in": 3, "n_out": 2} and meta["seconds"] == 1.5


def test_load_model_refuses_a_wrong_kind_in_one_line(tmp_path):
    path = artifacts.save_model(tmp_path / "m.safetensors", torch.nn.Linear(3, 2), "toy", {"n_in": 3, "n_out": 2})
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.load_model(path, "param_vae", _make)
    assert str(err.value) == f"{path}: expected an artifact of kind 'param_vae', found kind 'toy'"


def test_load_model_refuses_a_wrong_shape_with_expected_and_found(tmp_path):
    path = artifacts.save_model(tmp_path / "m.safetensors", torch.nn.Linear(3, 2), "toy", {"n_in": 3, "n_out": 2})
    # the file's weights are (2, 3); a loader that builds another architecture gets one clear line
    with pytest.raises(artifacts.ArtifactError) as err:
        artifacts.load_model(path, "toy", lambda arch: torch.nn.Linear(4, 2))
    assert "\n" not in str(err.value)
    assert "parameter 'weight' expected shape (2, 4), found (2, 3)" in str(err.value)


def test_save_model_keeps_reserved_names_apart(tmp_path):
    with pytest.raises(ValueError, match="must not start with 'model.'"):
        artifacts.save_model(tmp_path / "m.safetensors", torch.nn.Linear(1, 1), "toy", {},
                             {"model.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="metadata key 'kind' is reserved"):
        artifacts.save_model(tmp_path / "m.safetensors", torch.nn.Linear(1, 1), "toy", {}, metadata={"kind": "x"})


def test_every_model_loader_goes_through_load_model(tmp_path):
    """No build_or_load_* keeps a hand-written kind check or an inline load_tensors of its own."""
    import inspect

    from helpers import digit_eval, digit_models, image_ae, image_eval, image_generation
    for module in (vae, generation, image_ae, image_eval, image_generation, digit_models, digit_eval):
        src = inspect.getsource(module)
        assert "meta.get(\"kind\")" not in src and "load_tensors(" not in src, module.__name__


# --------------------------------------------------------------------------- cache keys


def test_sampling_and_display_knobs_do_not_change_the_weight_story_keys():
    display = {"guidance": 5.0, "gif_fps": 30, "n_generated": 99, "n_test": 7, "ddim_steps": 77, "eta": 1.0,
               "clip_x0": None, "cond_quantiles": [0.2], "n_per_target": 9}
    wd2 = {**WD, **display}
    assert generation.weight_diffusion_key(ZOO, VAE, wd2) == generation.weight_diffusion_key(ZOO, VAE, WD)
    assert generation.direct_diffusion_key(ZOO, wd2) == generation.direct_diffusion_key(ZOO, WD)
    vae2 = {**VAE, "n_eval": 3, "n_test": 11, "n_prior": 5}
    assert vae.vae_key(ZOO, vae2) == vae.vae_key(ZOO, VAE)
    assert vae.vae_key({**ZOO, "interp_points": 21, "threads": 1}, VAE) == vae.vae_key(ZOO, VAE)
    # training knobs do change them, and a change upstream reaches every key downstream
    for knob, value in [("train_steps", 4), ("lr", 3e-3), ("hidden", 32), ("seed", 1)]:
        assert generation.weight_diffusion_key(ZOO, VAE, {**WD, knob: value}) != \
            generation.weight_diffusion_key(ZOO, VAE, WD), knob
    assert generation.direct_diffusion_key(ZOO, {**WD, "direct_train_steps": 5}) != \
        generation.direct_diffusion_key(ZOO, WD)
    assert vae.vae_key(ZOO, {**VAE, "epochs": 3}) != vae.vae_key(ZOO, VAE)
    assert generation.weight_diffusion_key(ZOO, {**VAE, "lr": 3e-3}, WD) != \
        generation.weight_diffusion_key(ZOO, VAE, WD)


def test_changing_guidance_reuses_the_trained_models_and_train_steps_retrains(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDT_ARTIFACTS_DIR", str(tmp_path))
    before = runtime.set_device("cpu")
    try:
        _synthetic_zoo()
        den, info = generation.build_or_load_weight_diffusion(ZOO, VAE, WD)
        capsys.readouterr()
        den2, info2 = generation.build_or_load_weight_diffusion(ZOO, VAE, {**WD, "guidance": 4.0, "gif_fps": 2})
        out = capsys.readouterr().out
        assert info2["path"] == info["path"] and "saved" not in out and "loaded weight_diffusion" in out
        den3, info3 = generation.build_or_load_weight_diffusion(ZOO, VAE, {**WD, "train_steps": 4})
        out = capsys.readouterr().out
        assert info3["path"] != info["path"] and "saved weight_diffusion" in out and "loaded vae" in out
        assert len(info3["history"]["loss"]) == 4
    finally:
        runtime.set_device(before)


def test_write_json_round_trips_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "result.json"
    assert artifacts.write_json(path, {"a": 1.5, "b": [1, 2]}) == path
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [1, 2]}
    with pytest.raises(TypeError):
        artifacts.write_json(path, {"bad": object()})        # not JSON: the old file stays
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]

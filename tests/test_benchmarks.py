"""The benchmark scripts still run against the helpers they time (tiny sizes, no timing asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_catdog_estimate_scales_its_timed_pieces(tmp_path):
    est = _load("estimate_full_catdog")
    out = tmp_path / "estimate.json"
    result = est.main(["--presets", "smoke", "--n-images", "64", "--den-steps", "2", "--threads", "1",
                       "--out", str(out)])
    smoke = result["estimates"]["smoke"]
    parts = ("autoencoder", "sharper_decoder", "judge", "selector", "denoiser", "sampling")
    assert est.PIECES == parts
    assert all(smoke[k] > 0 for k in parts)
    assert smoke["total"] == pytest.approx(sum(smoke[k] for k in parts))
    # the code evaluations of smoke's sweeps: 2 classes x 50 images, 2 w at 5 steps, then 3 more steps, x2 (guidance)
    assert smoke["sampling_code_evaluations"] == 2 * (100 * 5 * 2)
    assert json.loads(out.read_text())["estimates"]["smoke"]["total"] == pytest.approx(smoke["total"])

"""How long does it take to sample 100 network latents? DDIM (50 steps) vs DDPM (1000 steps).

    python benchmarks/bench_ddim_sampling.py [--preset default] [--repeats 5]

Times, in one process, the diffusion compute of drawing 100 latents with the
weight-diffusion denoiser of ``--preset`` (the trained EMA denoiser if its
artifact exists under the artifacts folder, else a fresh one of the same size:
the cost of a forward pass does not depend on the weights):

- DDIM, ``steps=50``, :math:`\\eta = 0` (the sampler notebook 03 uses), and
- DDPM ancestral sampling through a 1000-step schedule (Ho et al.'s setting),
  the baseline,

each the median of ``--repeats`` runs after one warm-up, and prints the ratio.
Decoding the latents into networks is not included (the VAE decoder is one
batched matrix product either way). Prints ``ddim50_100nets_seconds`` and,
when ``LDT_RUN_DIR`` is set, logs it to the run's metrics CSV (notebook "03").
Bar: below 1 s. Timings on a shared machine are inflated by contention.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import median_seconds  # noqa: E402
from helpers import artifacts, config, diffusion, generation, runtime  # noqa: E402


def load_or_fresh_denoiser(preset: str):
    """The trained latent denoiser of ``preset`` if cached, else a fresh one of the same size."""
    zoo = config.get_config("zoo", preset)
    vae_cfg = config.get_config("vae", preset)
    wd = config.get_config("weight_diffusion", preset)
    dim = int(vae_cfg["latent_dim"])
    key = {"zoo": dict(zoo), "vae": dict(vae_cfg), "weight_diffusion": dict(wd)}
    path = artifacts.artifact_path("weight_diffusion", key)
    if path.exists():
        model, _ = generation.load_denoiser(path, dim=dim, kind="latent")
        return model, wd, f"trained ({path.name})"
    torch.manual_seed(0)
    return generation.make_denoiser(dim, wd).eval(), wd, "fresh (no trained artifact found)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=os.environ.get("LDT_PRESET", "default"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--ddpm-T", type=int, default=1000)
    args = parser.parse_args(argv)

    runtime.keep_freed_memory()   # as runtime.setup does in the notebooks
    threads = runtime.setup_threads()
    model, wd, which = load_or_fresh_denoiser(args.preset)
    sched = diffusion.NoiseSchedule.make(wd["schedule"], int(wd["T"]))
    sched_ddpm = diffusion.NoiseSchedule.make(wd["schedule"], args.ddpm_T)
    shape = (args.n, model.dim)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    ddim_s = median_seconds(lambda: diffusion.ddim_sample(
        model, sched, shape, steps=args.steps, eta=0.0, generator=gen()), args.repeats)
    ddpm_s = median_seconds(lambda: diffusion.ddpm_sample(
        model, sched_ddpm, shape, generator=gen()), max(1, args.repeats // 2))

    params = sum(p.numel() for p in model.parameters())
    print(f"denoiser: {which}; {params:,} parameters; latent dim {model.dim}; torch threads {threads}")
    print(f"{'sampler':<28}{'network calls':>14}{'seconds':>10}")
    print(f"{'DDIM, ' + str(args.steps) + ' steps, eta=0':<28}{args.steps:>14}{ddim_s:>10.3f}")
    print(f"{'DDPM, ' + str(args.ddpm_T) + ' steps (baseline)':<28}{args.ddpm_T:>14}{ddpm_s:>10.3f}")
    print(f"DDPM / DDIM time ratio: {ddpm_s / ddim_s:.1f}x")
    print(f"ddim50_100nets_seconds = {ddim_s:.4f}  (bar: < 1 s; {'met' if ddim_s < 1 else 'MISSED'})")
    if os.environ.get("LDT_RUN_DIR") and args.n == 100 and args.steps == 50:
        from helpers import runs
        runs.log_metric("03", "ddim50_100nets_seconds", ddim_s, preset=args.preset)
    return {"ddim_seconds": ddim_s, "ddpm_seconds": ddpm_s, "ratio": ddpm_s / ddim_s}


if __name__ == "__main__":
    main()

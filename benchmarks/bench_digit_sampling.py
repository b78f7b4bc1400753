"""How long does it take to draw 64 digits? Flow (Heun/Euler) and DDIM against DDPM-1000, decoding included.

    python benchmarks/bench_digit_sampling.py [--preset default] [--repeats 5]

Times, in one process, sampling 64 class-conditional latents with classifier-free
guidance (one batched call per step for both halves) and decoding them with the VAE
of notebook 06's ``--preset`` (architectures from the ``digits`` settings; fresh
weights: the cost of a forward pass does not depend on them):

- flow matching, Heun, ``sample_steps`` steps (the notebook's sampler; 2 calls a step),
- flow matching, Euler, 10 steps,
- DDIM, ``ddim_steps`` steps, and
- DDPM ancestral sampling through all 1000 steps: the baseline,

each the median of ``--repeats`` runs after one warm-up, and prints the ratios.
Prints ``mnist_gen_sample64_seconds`` (the notebook's sampler) and, when
``LDT_RUN_DIR`` is set, logs it to the run's metrics (notebook "06"). Bar: below
1 s on the CPU. Timings on a shared machine are inflated by contention.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import median_seconds  # noqa: E402
from helpers import config, diffusion, digit_models, runtime  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=os.environ.get("LDT_PRESET", "default"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=2.0)
    args = parser.parse_args(argv)

    runtime.keep_freed_memory()   # as runtime.setup does in the notebooks
    threads = runtime.setup_threads()
    cfg = config.get_config("digits", args.preset)
    torch.manual_seed(0)
    vae = digit_models.DigitVAE(cfg["vae_latent"], cfg["vae_channels"]).eval()
    gen = digit_models.make_generator(cfg["vae_latent"], cfg["gen_size"]).eval()
    sched = diffusion.NoiseSchedule.make(cfg["schedule"], 1000)
    labels = torch.arange(args.n) % 10

    def run(kind, steps, method="heun"):
        def fn():
            z = digit_models.sample_latents(gen, kind, labels, cfg["vae_latent"], steps, args.guidance,
                                            seed=0, sched=sched, method=method)
            return digit_models.decode_all(vae, z)
        return fn

    @torch.no_grad()
    def ddpm():
        z = diffusion.ddpm_sample(gen, sched, (args.n, cfg["vae_latent"]), cond=labels, guidance=args.guidance,
                                  generator=torch.Generator().manual_seed(0))
        return digit_models.decode_all(vae, z)

    rows = [
        (f"flow Heun, {cfg['sample_steps']} steps", 2 * cfg["sample_steps"],
         median_seconds(run("flow", cfg["sample_steps"], "heun"), args.repeats)),
        ("flow Euler, 10 steps", 10, median_seconds(run("flow", 10, "euler"), args.repeats)),
        (f"DDIM, {cfg['ddim_steps']} steps", cfg["ddim_steps"],
         median_seconds(run("ddpm", cfg["ddim_steps"]), args.repeats)),
        ("DDPM, 1000 steps (baseline)", 1000, median_seconds(ddpm, max(1, args.repeats // 2))),
    ]
    vae_p, gen_p = (sum(p.numel() for p in m.parameters()) for m in (vae, gen))
    print(f"VAE {vae_p:,} + generator {gen_p:,} parameters; {args.n} digits, guidance w={args.guidance} "
          f"(two halves per call); torch threads {threads}")
    print(f"{'sampler (+ decoding)':<30}{'network calls':>14}{'seconds':>10}{'DDPM-1000 / this':>18}")
    base = rows[-1][2]
    for name, calls, sec in rows:
        print(f"{name:<30}{calls:>14}{sec:>10.4f}{base / sec:>17.1f}x")
    headline = rows[0][2]
    print(f"mnist_gen_sample64_seconds = {headline:.4f}  (bar: < 1 s; {'met' if headline < 1 else 'MISSED'})")
    if os.environ.get("LDT_RUN_DIR") and args.n == 64:
        from helpers import runs
        runs.log_metric("06", "mnist_gen_sample64_seconds", headline, preset=args.preset)
    return {name: sec for name, _, sec in rows}


if __name__ == "__main__":
    main()

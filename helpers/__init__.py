"""Helpers for the Latent Diffusion Tutorials: the notebooks tell the story, this package does the work.

One concept per module; nothing runs on import (no seeding, downloads, threads or
plot styles until a function is called). Import what a notebook needs::

    from helpers import config, runtime, data, plots

| module          | what it holds                                                       |
|-----------------|---------------------------------------------------------------------|
| **shared core** | *the maths and tools every story uses*                              |
| `config`        | presets (`smoke`, `default`, `full`) and per-dataset settings; paths |
| `runtime`       | seeds, the device, CPU threads, allocator, progress, timers         |
| `data`          | MNIST, Fashion-MNIST, CIFAR-10 (and cats/dogs) as checked tensors   |
| `artifacts`     | atomic, safe saving; one model save/load; cache keyed on training   |
| `diffusion`     | schedules, samplers, flow matching, EMA, trainer, latent standardiser |
| `denoisers`     | networks that predict the noise (residual MLP, small U-Net)         |
| `plots`         | the one figure-export function and shared plot helpers              |
| `animation`     | denoising frames as slider, GIF and static grid                     |
| **weight story**| *notebooks 01, 02, 03, 05*                                          |
| `classifiers`   | small CNN/MLP classifiers, fast training, flat-vector layout        |
| `weights`       | flatten/unflatten, normalisation, weight datasets, alignment        |
| `vae`           | the parameter autoencoder / VAE                                     |
| `generation`    | the weight generator: diffusion on VAE latents, direct baseline,    |
|                 | accuracy conditioning over the wide zoo                             |
| `evaluation`    | accuracy summary, novelty (IoU), baselines, ensembles, fine-tuning  |
| **image story** | *notebooks 04 (cats/dogs) and 06 (digits)*                          |
| `image_ae`      | the cat/dog image autoencoder (CAL/CAB blocks, center loss)         |
| `adversarial`   | a sharper decoder: adversarial fine-tuning against a patch critic   |
| `image_eval`    | honest image metrics: judge classifier, feature FD, nearest copies  |
| `image_generation` | the cat/dog generator: latent denoiser, sampling, guidance choice |
| `digit_models`  | the tiny digit VAE and latent generators (flow / DDPM, 3 sizes)     |
| `likelihood`    | classification by Bayes' rule: denoising error, flow ODE likelihood |
| `digit_eval`    | digit judge and CNN baseline, judge-free guidance choice, figures   |
| **infrastructure** | *preparing data, running and storing the series*                 |
| `data_prepare`  | preparing the data once: registry mirrors, prepare/verify, CLI      |
| `runs`          | run folders and the metrics CSV                                     |
| `series`        | executes the notebooks in order (`make run`)                        |
| `notebooks`     | notebook hygiene: check and strip outputs                           |
"""

__version__ = "0.1.0"

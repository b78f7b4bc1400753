"""Helpers for the Latent Diffusion Tutorials: the notebooks build the systems, this package keeps
what is not the lesson. One concept per module; nothing runs on import.

- shared core: ``config`` (presets, rules, paths), ``runtime`` (seeds, device, threads, early
  checks), ``data``, ``artifacts``, ``diffusion``, ``denoisers``, ``plots``, ``animation``;
- weight story (notebooks 01-03, 05): ``classifiers``, ``weights``, ``vae``, ``generation``, ``evaluation``;
- image story (notebooks 04, 06): ``image_ae``, ``adversarial``, ``image_eval``, ``image_generation``,
  ``digit_models``, ``likelihood``, ``digit_eval``;
- infrastructure: ``runs`` (run records), ``series`` (``make run``), ``notebooks`` (stripping outputs).
"""

__version__ = "0.1.0"

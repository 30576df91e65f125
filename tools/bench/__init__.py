"""One benchmark command for the three bundles: ``python -m tools.bench [--quick] [--json]``.

- :mod:`tools.bench.counting`: :class:`CallCounter`, the wrapper around a network that counts its calls;
- :mod:`tools.bench.calls`: network calls per 100-slice volume (AortaDiff, abdomen) and per volume
  (cardiac) of each bundle's default inference settings, counted through the bundle's own inferer;
- :mod:`tools.bench.aortadiff`: AortaDiff sampler settings side by side on one model and the same
  held-out ROI slices (calls, seconds, ROI PSNR/SSIM, lumen/thrombus Dice) and the training step of the
  bundle against the bare network step (img/s, ratio, peak memory);
- :mod:`tools.bench.__main__`: the command, the table, and its section appended to ``docs/benchmarks.md``.

Everything is built from the bundles' configs (``monai.bundle.ConfigParser``), so what is measured is
what ``python -m monai.bundle run`` runs.
"""

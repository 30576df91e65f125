"""Does the diffusion model read the spatial mean of its starting noise as the slice's brightness?

At t = T - 1 of the linear 1e-4..0.02 schedule sqrt(abar) is 0.0064: the mean of x_T over an H x W slice
(standard deviation 1 / sqrt(HW), 0.021 at 48 x 48) is noise, three times the largest shift the image could
cause, and the right eps prediction passes it through (gain about 1). A network that passes on only a fraction
g of it moves its x_0 estimate by (1 - g) * mean / sqrt(abar), about 140 * mean at g = 0.1: a slice started
from noise of positive mean comes out bright, with noise where the air should be black.

Two measurements, on the bundle's own network, checkpoint, test slices and sampler (``evaluate.json``):

- the **DC gain** of the eps output (:func:`tools.diffusion.dc_gain.eps_dc_gain`);
- the PSNR of sampled slices against the real ones, split by the sign of the starting noise's mean.

    python -m tools.abdomen.noise_mean \\
        --config_file "['bundles/abdomen_semantic_synthesis/configs/train.json','.../evaluate.json','.../small.json']" \\
        --checkpoint runs/demo/abdomen_semantic_synthesis/models/model.pt [--seeds 4] [--out report.json] [--key value ...]

``--key value`` overrides config keys as on the ``monai.bundle run`` command line (the demo's sizes, e.g.
``--image_size 48 --eval_sampler ddim --eval_num_inference_steps 25``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from monai.metrics import PSNRMetric

from tools.abdomen.evaluation import unit_range
from tools.diffusion.dc_gain import eps_dc_gain, spatial_mean

__all__ = ["noise_mean_study", "main"]

#: a sampled slice below this PSNR against its real slice counts as failed (the untrained model gives about 5 dB)
FAILED_DB = 10.0


@torch.no_grad()
def noise_mean_study(
    sampler: Inferer,
    network: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    seeds: Sequence[int],
    image_key: str = "image",
    label_key: str = "label",
) -> dict[str, Any]:
    """Sample every slice of ``batches`` once per seed; PSNR (images in [-1, 1]) against the starting noise's mean.

    Returns ``noise_mean`` and ``psnr`` per sample, their Pearson ``correlation``, and for noise of ``positive``
    and ``negative`` mean: ``n``, ``failed`` (PSNR below :data:`FAILED_DB`) and ``mean_psnr``.
    """
    batches = list(batches)
    means, values = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        for batch in batches:
            condition = batch[label_key].float()
            real = batch[image_key].float()
            noise = torch.randn((condition.shape[0], real.shape[1], *condition.shape[2:]), generator=generator)
            fake = sampler(condition, network, noise=noise).float()
            psnr = PSNRMetric(max_val=1.0, reduction="none")(*unit_range(fake, real))  # the evaluation's PSNR
            values.append(psnr.flatten().cpu())
            means.append(spatial_mean(noise).flatten(1).mean(1))
    m, v = torch.cat(means).double(), torch.cat(values).double()

    def group(sel: torch.Tensor) -> dict[str, Any]:
        return {"n": int(sel.sum()), "failed": int((v[sel] < FAILED_DB).sum()),
                "mean_psnr": float(v[sel].mean()) if sel.any() else float("nan")}

    return {
        "noise_mean": m.tolist(),
        "psnr": v.tolist(),
        "correlation": float(torch.corrcoef(torch.stack([m, v]))[0, 1]),
        "positive": group(m > 0),
        "negative": group(m <= 0),
    }


def main(
    config_file: str | list[str],
    checkpoint: str,
    seeds: int = 4,
    timesteps: Sequence[int] = (999, 500, 100),
    out: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Both measurements on the ``network`` of ``config_file`` with the weights of ``checkpoint``; prints a summary."""
    from monai.bundle import ConfigParser

    from tools.engines.checkpoint_io import load_network

    if out is not None and Path(out).exists():
        raise FileExistsError(f"--out: {out} exists; choose another file")
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(overrides)
    network = load_network(parser.get_parsed_content("network"), checkpoint, hint="--checkpoint")
    batches = list(parser.get_parsed_content("evaluation#dataloader"))
    sampler = parser.get_parsed_content("sampler_def")
    sampler.progress = False
    gain = eps_dc_gain(network, batches[0]["label"].float(), timesteps, generator=torch.Generator().manual_seed(0))
    report = {"checkpoint": str(checkpoint), "dc_gain": {int(t): float(g.mean()) for t, g in zip(timesteps, gain)},
              **noise_mean_study(sampler, network, batches, range(seeds))}
    print(f"eps DC gain by timestep: {', '.join(f't={t}: {g:.3f}' for t, g in report['dc_gain'].items())}")
    print(f"PSNR against the mean of the starting noise: Pearson r = {report['correlation']:.2f}")
    for sign in ("positive", "negative"):
        g = report[sign]
        print(f"  {sign} mean: {g['n']} samples, {g['failed']} below {FAILED_DB:g} dB, mean PSNR {g['mean_psnr']:.2f} dB")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda report: None)  # the summary is printed; the full report goes to --out

"""Network calls of each bundle's default inference settings, counted through the bundle's own inferer.

The network is replaced by :class:`~tools.bench.counting.ZeroNetwork` (same output layout, no cost)
inside a :class:`~tools.bench.counting.CallCounter`, so a 1,990-call RePaint schedule over a 100-slice
volume is counted in seconds; the sampler code that runs is the bundle's. The spatial size does not
change the counts, so it is kept small (``image_size``), and torch runs on one thread meanwhile (the
per-call cost at that size is Python and thread start-up, not arithmetic).

- AortaDiff: ``inference.json``'s ``inferer`` on a (1, 2, S, S, 100) volume whose 100 axial slices all
  hold aorta;
- abdomen: ``inference.json``'s ``inferer`` on a (1, 1, S, S, 100) label volume with labels on every slice;
- cardiac: ``generate.json``'s ``LatentDiffusionInferer`` and DDIM scheduler (timesteps set as its
  ``initialize`` does) drawing one latent volume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from tools.bench.counting import CallCounter, ZeroNetwork

REPO = Path(__file__).resolve().parents[2]
BUNDLES = REPO / "bundles"

__all__ = ["REPO", "BUNDLES", "bundle_parser", "aortadiff_volume_calls", "abdomen_volume_calls", "cardiac_volume_calls"]


def bundle_parser(bundle: str, config_files: Sequence[str], overrides: Mapping[str, Any] | None = None) -> ConfigParser:
    """A ConfigParser over ``bundles/<bundle>/configs/<files>`` (merged in order) with ``overrides`` applied."""
    files = [str(BUNDLES / bundle / "configs" / f) for f in config_files]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"tools.bench: config file {f} not found")
    parser = ConfigParser()
    parser.read_config(files)
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def aortadiff_volume_calls(overrides: Mapping[str, Any] | None = None, slices: int = 100, image_size: int = 8,
                           config_files: Sequence[str] = ("inference.json",)) -> dict[str, Any]:
    """Calls (and network batch sizes) of AortaDiff's ``inferer`` for one volume of ``slices`` ROI slices."""
    parser = bundle_parser("aortadiff_cect", config_files, {"image_size": image_size, "progress": False,
                                                            "device": "$torch.device('cpu')", **(overrides or {})})
    inferer = parser.get_parsed_content("inferer")
    net = CallCounter(ZeroNetwork(2, 1, prediction_type=parser["prediction_type"], has_mask_head=True))
    vol = torch.zeros(1, 2, image_size, image_size, slices)
    vol[:, 1, image_size // 4: 3 * image_size // 4, image_size // 4: 3 * image_size // 4] = 1.0
    with torch.no_grad(), _one_thread():
        inferer(vol, net)
    return {"calls": net.calls, "max_network_batch": max(net.batch_sizes), "slices": slices,
            "mask_head_calls": sum(1 for k in net.kwargs if not k.get("image_only", False))}


def abdomen_volume_calls(overrides: Mapping[str, Any] | None = None, slices: int = 100, image_size: int = 8,
                         config_files: Sequence[str] = ("inference.json",)) -> dict[str, Any]:
    """Calls of the abdomen bundle's ``inferer`` for one label volume of ``slices`` labelled slices."""
    parser = bundle_parser("abdomen_semantic_synthesis", config_files,
                           {"image_size": image_size, "inferer#progress": False, "sampler_def#progress": False,
                            "device": "$torch.device('cpu')", **(overrides or {})})
    inferer = parser.get_parsed_content("inferer")
    net = CallCounter(ZeroNetwork(2))  # eps + learned-range variance value, one image channel
    labels = torch.zeros(1, 1, image_size, image_size, slices)
    labels[:, :, 2:-2, 2:-2] = 1
    with torch.no_grad(), _one_thread():
        inferer(labels, net)
    return {"calls": net.calls, "max_network_batch": max(net.batch_sizes), "slices": slices}


class _IdentityDecoder(torch.nn.Module):
    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return z


def cardiac_volume_calls(overrides: Mapping[str, Any] | None = None,
                         config_files: Sequence[str] = ("common.json", "generate.json")) -> dict[str, Any]:
    """Calls of the cardiac ``generate.json`` sampler (LatentDiffusionInferer + its scheduler) for one volume."""
    parser = bundle_parser("cardiac_ldm_ssl", config_files,
                           {"inferer#scale_factor": 1.0, **(overrides or {})})
    scheduler = parser.get_parsed_content("scheduler")
    scheduler.set_timesteps(num_inference_steps=int(parser.get_parsed_content("num_inference_steps")))
    inferer = parser.get_parsed_content("inferer")
    channels = int(parser.get_parsed_content("latent_channels"))
    net = CallCounter(ZeroNetwork(channels))
    noise = torch.zeros(1, channels, 4, 4, 4)
    with torch.no_grad(), _one_thread():
        inferer.sample(input_noise=noise, autoencoder_model=_IdentityDecoder(), diffusion_model=net,
                       scheduler=scheduler, verbose=False)
    return {"calls": net.calls, "max_network_batch": max(net.batch_sizes), "volumes": 1}

"""GPU speed switches for a bundle's network, each a top-level config key: channels-last memory and ``torch.compile``.

The bundles turn on what helps on a GPU when CUDA is present (``"$torch.cuda.is_available()"``) and
leave the CPU path as it is: bf16 autocast (the engines' ``amp``), SDPA attention (MONAI's
``use_flash_attention``), fused AdamW (the optimiser's ``fused``) and channels-last (here) are on with CUDA;
``torch.compile`` is off unless asked (its first steps compile for minutes).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["prepare_network"]


def prepare_network(network: nn.Module, device: torch.device | str, channels_last: bool = False,
                    compile: bool = False, compile_mode: str | None = None) -> nn.Module:
    """Move ``network`` to ``device``; optionally in channels-last memory format and compiled in place.

    ``compile`` uses :meth:`torch.nn.Module.compile`, which keeps the module (and so its ``state_dict`` keys,
    checkpoints and EMA copies) unchanged. Channels-last applies to 4D weights (2D convolutions); 3D
    networks would need ``channels_last_3d`` and are left as they are. Returns the same module.
    """
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    if compile:
        network.compile(mode=compile_mode)
    return network

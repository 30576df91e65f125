"""Load a network's weights from a bundle checkpoint (main network under ``"model"``) with clear errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["load_network"]


def load_network(network: nn.Module, checkpoint: str | Path, device: torch.device | str = "cpu",
                 key: str = "model", eval_mode: bool = True) -> nn.Module:
    """Load ``checkpoint[key]`` (``torch.load(..., weights_only=True)``) into ``network``, move it to ``device``.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: ``key`` is missing from the checkpoint.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist (train the stage that writes it first)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if key not in state:
        raise ValueError(f"checkpoint '{path}' has no '{key}' entry (found {sorted(state)})")
    network.load_state_dict(state[key])
    network = network.to(device)
    return network.eval() if eval_mode else network

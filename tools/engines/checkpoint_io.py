"""Bundle checkpoint I/O: load a network's weights (main network under ``"model"``) with clear errors, and
save the untrained network as ``checkpoint_iteration=0.pt`` so evaluations can compare against it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["load_network", "save_initial_checkpoint"]


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


def save_initial_checkpoint(network: torch.nn.Module, ckpt_dir: str, enabled: bool = True) -> str | None:
    """Write ``{"model": state_dict}`` to ``<ckpt_dir>/checkpoint_iteration=0.pt`` when ``enabled``.

    The name follows MONAI ``CheckpointSaver``'s iteration checkpoints, so the bundle's checkpoint sweep
    (evaluate.json) lists the untrained model as iteration 0. Returns the path, or None when disabled.
    """
    if not enabled:
        return None
    path = Path(ckpt_dir) / "checkpoint_iteration=0.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict()}, path)
    return str(path)

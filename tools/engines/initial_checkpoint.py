"""Save the untrained network as ``checkpoint_iteration=0.pt`` so evaluations can compare against it."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["save_initial_checkpoint"]


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

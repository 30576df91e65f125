"""Check, before any work, that a weights file fits the network a config builds (a checkpoint of another
bundle or stage fails here with one line naming the file, not deep inside ``load_state_dict``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tools.engines.errors import InputFileError, InputValueError

__all__ = ["check_checkpoint_fits"]


def check_checkpoint_fits(path: str | Path, network: nn.Module, key: str = "model", config_key: str = "checkpoint") -> None:
    """``path`` (config key ``config_key``) holds, under ``key`` or as a plain state dict, weights whose names
    and shapes are exactly those of ``network``.

    Raises:
        InputFileError: ``path`` does not exist or is not a ``torch.save`` file.
        InputValueError: the weights do not fit (counts of missing / unexpected / reshaped entries, with examples).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint '{path}' (key '{config_key}') does not exist; train the model first or "
                             "download it (tools/download_weights.py)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputFileError(f"checkpoint '{path}' (key '{config_key}') cannot be read: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
    state = content.get(key, content) if isinstance(content, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        found = sorted(map(str, content))[:8] if isinstance(content, Mapping) else type(content).__name__
        raise InputValueError(f"checkpoint '{path}' (key '{config_key}') has no '{key}' weights (found {found})")
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(x)} {what} (e.g. '{x[0]}')" for x, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if x]
        raise InputValueError(f"checkpoint '{path}' (key '{config_key}') does not fit this bundle's network "
                              f"({len(own)} weights): {', '.join(parts)}; is it another bundle's or stage's model, "
                              "or were the network sizes changed?")

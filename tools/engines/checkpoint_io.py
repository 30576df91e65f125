"""Bundle checkpoint I/O: read a ``torch.save`` file safely (``weights_only=True``) with clear errors, load a
network's weights (a plain state dict as model-zoo's ``models/model.pt``, or the ``"model"`` entry of a
training checkpoint) and refuse weights that do not fit it, and save the untrained network as
``checkpoint_iteration=0.pt`` so evaluations can compare against it.

Every file the project reads back with ``torch.load`` goes through :func:`load_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tools.engines.errors import InputFileError, InputValueError

__all__ = ["check_checkpoint_fits", "check_state_dict", "load_checkpoint", "load_network", "save_initial_checkpoint"]


def _is_state_dict(content: Any) -> bool:
    """A plain ``state_dict()``: a non-empty mapping whose every value is a tensor."""
    return isinstance(content, Mapping) and bool(content) and all(torch.is_tensor(v) for v in content.values())


def load_checkpoint(
    path: str | Path,
    key: str | None = None,
    map_location: torch.device | str = "cpu",
    accept_state_dict: bool = False,
    hint: str = "",
) -> Any:
    """Read ``path`` with ``torch.load(..., weights_only=True)`` and return its content, or ``content[key]``.

    Args:
        path: file written by ``torch.save`` (a checkpoint dict such as ``{"model": ..., "optimizer": ...}``,
            a plain state dict, or containers of tensors).
        key: entry to return; ``None`` returns the whole content.
        map_location: where tensors are loaded (default CPU; ``load_state_dict`` copies them to the network).
        accept_state_dict: when ``key`` is missing but the file itself is a plain state dict (every value a
            tensor, as model-zoo's ``models/model.pt``), return the file's content instead of failing.
        hint: what to do about a missing file or key (e.g. ``"train the LDM stage first"``), added to the error.

    Raises:
        FileNotFoundError: ``path`` does not exist (names it).
        ValueError: ``key`` is missing, naming the keys found (or the content is not a dict).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint '{path}' does not exist ({hint or 'train the stage that writes it first'})"
        )
    content = torch.load(path, map_location=map_location, weights_only=True)
    if key is None:
        return content
    if not isinstance(content, Mapping):
        raise ValueError(f"checkpoint '{path}' holds a {type(content).__name__}, not a dict with a '{key}' entry")
    if key in content:
        return content[key]
    if accept_state_dict and _is_state_dict(content):
        return content
    found = sorted(str(k) for k in content)
    shown = found[:10] + ([f"... {len(found) - 10} more"] if len(found) > 10 else [])
    raise ValueError(f"checkpoint '{path}' has no '{key}' entry (found {shown})" + (f"; {hint}" if hint else ""))


def check_state_dict(network: nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """Raise unless ``state`` has exactly ``network``'s variables with their shapes.

    Raises:
        ValueError: no variable matches (the file belongs to another network), or some are missing,
            unexpected or of another shape; the message names ``path`` and the first keys concerned.
    """
    own = network.state_dict()
    if not _is_state_dict(state):
        raise ValueError(f"checkpoint '{path}' does not hold a state dict of tensors for {type(network).__name__}")
    matched = [k for k, v in own.items() if k in state and tuple(state[k].shape) == tuple(v.shape)]
    if not matched:
        raise ValueError(
            f"checkpoint '{path}' matches 0 of {len(own)} variables of {type(network).__name__}: it belongs to "
            f"another network or configuration (its first keys: {list(state)[:3]}, expected: {list(own)[:3]})"
        )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and k not in matched]
    if missing or unexpected or shapes:
        parts = [f"{name} {len(keys)} (e.g. {keys[:3]})" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        raise ValueError(
            f"checkpoint '{path}' matches {len(matched)} of {len(own)} variables of {type(network).__name__}: "
            + "; ".join(parts)
        )


def check_checkpoint_fits(path: str | Path, network: nn.Module, key: str = "model",
                          config_key: str = "checkpoint") -> None:
    """Before any work: ``path`` (config key ``config_key``) holds, under ``key`` or as a plain state dict,
    weights that fit ``network`` exactly (:func:`check_state_dict`); a checkpoint of another bundle or stage
    fails here with one line naming the file and the key, not deep inside ``load_state_dict``.

    Raises:
        InputFileError: ``path`` does not exist or is not a ``torch.save`` file.
        InputValueError: it has no ``key`` weights, or they do not fit ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"checkpoint '{path}' (key '{config_key}') does not exist; train the model first or "
                             "download it (tools/download_weights.py)")
    try:
        state = load_checkpoint(path, key, accept_state_dict=True)
    except ValueError as e:
        raise InputValueError(f"{e} (config key '{config_key}')") from e
    except Exception as e:  # not a torch.save file, or truncated
        raise InputFileError(f"checkpoint '{path}' (key '{config_key}') cannot be read: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from e
    try:
        check_state_dict(network, state, path)
    except ValueError as e:
        raise InputValueError(f"{e}; it does not fit this bundle's network (config key '{config_key}'): is it "
                              "another bundle's or stage's model, or were the network sizes changed?") from e


def load_network(
    network: nn.Module,
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    key: str = "model",
    eval_mode: bool = True,
    accept_state_dict: bool = True,
    hint: str = "",
) -> nn.Module:
    """Load ``checkpoint[key]`` (:func:`load_checkpoint`) into ``network``, move it to ``device``.

    Args:
        accept_state_dict, hint: as in :func:`load_checkpoint`; by default a plain state dict (model-zoo's
            ``models/model.pt``) is accepted as well as a checkpoint dict with a ``key`` entry.
        eval_mode: return the network in ``eval()`` mode.

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: ``key`` is missing from the checkpoint, or its variables do not fit ``network``
            (:func:`check_state_dict`): never a silently untrained or half-loaded network.
    """
    state = load_checkpoint(checkpoint, key, accept_state_dict=accept_state_dict, hint=hint)
    check_state_dict(network, state, checkpoint)
    network.load_state_dict(state)
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

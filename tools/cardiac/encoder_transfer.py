"""Transfer of self-supervised pretrained **encoder** weights into a segmentation U-Net.

Hu et al. pretrain a 3D U-Net to restore images with zeroed blocks, then fine-tune for segmentation
with the pretrained encoder and a re-initialised decoder. With MONAI's ``BasicUNet`` the encoder is the
modules ``conv_0, down_1 .. down_4``; the decoder (``upcat_*``, ``final_conv``) keeps the fresh
initialisation of the newly built network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from tools.engines.checkpoint_io import load_checkpoint

__all__ = ["BASIC_UNET_ENCODER", "load_encoder_weights"]

BASIC_UNET_ENCODER = ("conv_0", "down_1", "down_2", "down_3", "down_4")

logger = logging.getLogger(__name__)


def load_encoder_weights(
    network: nn.Module,
    checkpoint: str | Path | None,
    encoder_prefixes: Sequence[str] = BASIC_UNET_ENCODER,
    key: str = "model",
) -> nn.Module:
    """Copy the parameters/buffers whose names start with one of ``encoder_prefixes`` from
    ``checkpoint[key]`` (or a checkpoint that is itself a plain state dict) into ``network``; everything
    else is left as initialised.

    Args:
        network: the segmentation network (a ``DistributedDataParallel`` wrapper is unwrapped).
        checkpoint: path of the pretraining checkpoint; ``None`` or ``""`` trains from scratch (no-op).
        encoder_prefixes: top-level module names that form the encoder.
        key: checkpoint entry holding the pretrained network's state dict.

    Returns:
        ``network`` (modified in place).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        ValueError: the key is missing, or an encoder tensor is missing or has another shape.
    """
    if checkpoint is None or str(checkpoint) in ("", "None", "none"):
        logger.info("no pretrained checkpoint: the segmentation network is trained from scratch")
        return network
    path = Path(checkpoint)
    state = load_checkpoint(
        path, key, accept_state_dict=True,
        hint="run pretrain_ssl.json first or set --pretrained_checkpoint None to train from scratch",
    )
    target = network.module if hasattr(network, "module") else network
    own = target.state_dict()
    prefixes = tuple(p.rstrip(".") + "." for p in encoder_prefixes)
    selected = {k: v for k, v in own.items() if k.startswith(prefixes)}
    if not selected:
        raise ValueError(f"network has no parameters under the encoder prefixes {list(encoder_prefixes)}")
    for name, tensor in selected.items():
        if name not in state:
            raise ValueError(f"checkpoint '{path}': encoder tensor '{name}' is missing")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint '{path}': encoder tensor '{name}' has shape {tuple(state[name].shape)}, "
                f"the network expects {tuple(tensor.shape)}"
            )
    own.update({k: state[k].to(own[k].dtype) for k in selected})
    target.load_state_dict(own)
    logger.info(f"loaded {len(selected)} encoder tensors from '{path}'; decoder re-initialised")
    return network

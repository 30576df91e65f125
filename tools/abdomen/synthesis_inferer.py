"""Whole-volume mask-to-CT synthesis, slice by slice, as a MONAI ``Inferer``.

``SliceSynthesisInferer(label_volume, network) -> synthetic CT volume in HU`` with the label volume's
shape and metadata (affine, applied operations, so that ``Invertd`` can undo an ``Orientationd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import optional_import

from tools.data.transforms import unit_to_hu
from tools.engines.errors import InputFileError, InputValueError
from tools.engines.output_guard import refuse_overwrite

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["SliceSynthesisInferer", "check_inference_io"]


class SliceSynthesisInferer(Inferer):
    """Synthesise every axial slice (last axis) of a label volume that holds any label.

    Each slice's label map is one-hot encoded (``num_classes`` channels), resized to ``image_size`` (nearest),
    sampled by ``sampler`` (e.g. :class:`tools.diffusion.learned_range_sampler.LearnedRangeSampler`) in batches
    of ``batch_size`` slices, resized back (bilinear), mapped from the model range [-1, 1] to [0, 1] and to HU
    inside the window ``[a_min, a_max]``. Slices without any label get ``a_min``.

    Args:
        sampler: ``sampler(condition (N, K, S, S), network) -> (N, 1, S, S)`` in [-1, 1].
        image_size: S, the slice size the network was trained at.
        num_classes: K, one-hot channels (17: background, 15 organs, body).
        a_min, a_max: HU window (level 40 / width 400: -160, 240).
        batch_size: slices per sampler call.
        progress: tqdm bar over slice batches (the sampler shows one over steps).
    """

    def __init__(
        self,
        sampler: Inferer,
        image_size: int = 256,
        num_classes: int = 17,
        a_min: float = -160.0,
        a_max: float = 240.0,
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.sampler = sampler
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.batch_size = int(batch_size)
        self.progress = progress

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        """
        Args:
            inputs: label volume (1, H, W, D) or batch (B, 1, H, W, D) of integer ids 0..num_classes-1.
            network: the diffusion network.
        Returns:
            synthetic CT in HU, same shape (and MetaTensor metadata) as ``inputs``, float32.
        """
        batched = inputs.ndim == 5
        vols = inputs if batched else inputs[None]
        if vols.ndim != 5 or vols.shape[1] != 1:
            raise ValueError(f"SliceSynthesisInferer expects a (1, H, W, D) label volume, got shape {tuple(inputs.shape)}.")
        plain = vols.as_tensor() if isinstance(vols, MetaTensor) else vols
        out = torch.full(plain.shape, self.a_min, dtype=torch.float32, device=plain.device)
        for b in range(plain.shape[0]):
            lab = plain[b, 0].round().long()  # (H, W, D)
            h, w, _ = lab.shape
            slices = [k for k in range(lab.shape[-1]) if bool((lab[..., k] > 0).any())]
            chunks = [slices[i : i + self.batch_size] for i in range(0, len(slices), self.batch_size)]
            it = tqdm(chunks, desc="slices", unit="batch") if self.progress and has_tqdm else chunks
            for chunk in it:
                lab2d = lab[..., chunk].permute(2, 0, 1)[:, None].float()  # (n, 1, H, W)
                lab2d = F.interpolate(lab2d, size=(self.image_size, self.image_size), mode="nearest").long()
                onehot = F.one_hot(lab2d[:, 0].clamp(0, self.num_classes - 1), self.num_classes).permute(0, 3, 1, 2)
                img = self.sampler(onehot.float(), network)  # (n, 1, S, S) in [-1, 1]
                img = F.interpolate(img.float(), size=(h, w), mode="bilinear", align_corners=False)
                hu = unit_to_hu((img.clamp(-1, 1) + 1) / 2, self.a_min, self.a_max)
                out[b, 0][..., chunk] = hu[:, 0].permute(1, 2, 0)
        if isinstance(vols, MetaTensor):
            out = MetaTensor(out, meta=vols.meta, applied_operations=vols.applied_operations)
        return out if batched else out[0]


def check_inference_io(
    input_files: Sequence[str], output_dir: str, postfix: str = "synthetic", overwrite: bool = False
) -> list[str]:
    """Check the inference inputs and outputs before any work is done.

    Raises:
        ValueError: no input, or an input is not a ``.nii`` / ``.nii.gz`` label map.
        FileNotFoundError: an input file does not exist (named).
        FileExistsError: an output ``<output_dir>/<stem>_<postfix>.nii.gz`` exists and ``overwrite`` is False.
        ValueError: an output would be one of the input files (never allowed).
    Returns:
        the planned output paths.
    """
    files = [str(f) for f in ([input_files] if isinstance(input_files, (str, Path)) else input_files)]
    if not files:
        raise InputValueError("inference: 'input_files' is empty; expected one or more NIfTI label maps (AMOS ids).")
    outputs = []
    for f in files:
        if not f.endswith((".nii", ".nii.gz")):
            raise InputValueError(f"inference: input '{f}' (key 'input_files') is not a NIfTI label map (.nii / .nii.gz).")
        if not Path(f).is_file():
            raise InputFileError(f"inference: input label map '{f}' (key 'input_files') does not exist.")
        stem = Path(f).name.removesuffix(".gz").removesuffix(".nii")
        outputs.append(str(Path(output_dir) / f"{stem}_{postfix}.nii.gz"))
    refuse_overwrite(outputs, overwrite, inputs=files)
    return outputs

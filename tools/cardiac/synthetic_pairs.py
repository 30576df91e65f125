"""Sampling of synthetic CT image + label pairs from the joint latent diffusion model (stage 3).

Each pair is drawn with MONAI's ``LatentDiffusionInferer.sample`` (DDIM by default): noise in the latent
space -> denoised latent -> divided by the stored scale factor -> joint decoder output. Channel 0 is the
image (windowed units, written back in HU), channels 1.. are the label logits; the label is their argmax
with small disconnected fragments of every structure removed (:mod:`tools.cardiac.label_cleanup`).
Volumes are written as NIfTI with a realistic affine (the RAS geometry of a reference training volume
resized to the model grid) and listed in a Decathlon-style datalist under ``"training"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from tools.cardiac.label_cleanup import remove_small_fragments
from tools.data.nifti_io import save_atomic
from tools.data.transforms import unit_to_hu
from tools.engines.output_guard import refuse_overwrite

__all__ = ["resized_ras_affine", "SyntheticPairGenerator"]

logger = logging.getLogger(__name__)


def resized_ras_affine(reference: str | Path | None, image_size: Sequence[int], fov_fraction: float = 1.0,
                       default_spacing: Sequence[float] = (0.8, 0.8, 1.5), keep_slice_spacing: bool = False) -> np.ndarray:
    """RAS affine of the model grid ``image_size`` covering the same field of view as ``reference``.

    The reference NIfTI is brought to the closest canonical (RAS) orientation, its voxel size scaled by
    ``fov_fraction * reference_shape / image_size`` in-plane (``reference_shape / image_size`` along the
    slices; the training pipeline's centre crop ``CenterScaleCropd(roi_scale=[f, f, 1])``) and its centre
    kept. With ``keep_slice_spacing`` (the pipeline keeps every slice and crops blocks of ``image_size[2]`` along z,
    ``load_slices`` -1) the slice spacing is the reference's. Without a reference, ``default_spacing`` (mm) is used around the origin.
    """
    size = np.asarray(image_size, dtype=float)
    if reference is None:
        spacing = np.asarray(default_spacing, dtype=float)
        affine = np.diag(list(spacing) + [1.0])
        affine[:3, 3] = -spacing * (size - 1) / 2.0
        return affine
    path = Path(reference)
    if not path.is_file():
        raise FileNotFoundError(f"reference volume '{path}' for the synthetic affine does not exist")
    img = nib.as_closest_canonical(nib.load(str(path)))
    ref_shape = np.asarray(img.shape[:3], dtype=float)
    a = img.affine.copy()
    centre = a[:3, :3] @ ((ref_shape - 1) / 2.0) + a[:3, 3]
    extent = ref_shape * np.array([fov_fraction, fov_fraction, 1.0])
    if keep_slice_spacing:
        extent[2] = size[2]
    lin = a[:3, :3] * (extent / size)[None, :]
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = centre - lin @ ((size - 1) / 2.0)
    return affine


class SyntheticPairGenerator:
    """Sample ``num_samples`` image/label pairs and write NIfTI files plus ``datalist.json``.

    Args:
        autoencoder: trained :class:`tools.cardiac.joint_vae.JointAutoencoderKL`.
        diffusion_model: trained latent ``DiffusionModelUNet``.
        inferer: ``LatentDiffusionInferer`` built with the checkpoint's scale factor.
        scheduler: sampling scheduler (e.g. ``DDIMScheduler`` with ``set_timesteps`` applied).
        num_samples: number of pairs to write.
        latent_shape: ``(C, h, w, d)`` of one latent.
        output_dir: folder for ``<case_id>/image.nii.gz``, ``<case_id>/label.nii.gz`` and ``datalist.json``.
        affine: 4x4 voxel-to-world affine of the written volumes.
        a_min, a_max: HU window of the image channel (inverse of the training ``ScaleIntensityRanged``).
        label_ids: structure ids to clean (1..8).
        min_fraction, min_voxels: fragment removal thresholds (see ``remove_small_fragments``).
        batch_size, device, amp, seed: sampling settings (``amp``: bf16 autocast on CUDA).
        condition: optional ``(1, ...)`` conditioning tensor repeated over each batch.
        overwrite: replace an existing ``datalist.json`` and case files in ``output_dir``.
        verbose: show the sampler's progress bar.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        diffusion_model: nn.Module,
        inferer,
        scheduler,
        num_samples: int,
        latent_shape: Sequence[int],
        output_dir: str | Path,
        affine: np.ndarray | Sequence[Sequence[float]],
        a_min: float = -1000.0,
        a_max: float = 1000.0,
        label_ids: Sequence[int] = tuple(range(1, 9)),
        min_fraction: float = 0.1,
        min_voxels: int = 0,
        batch_size: int = 1,
        device: torch.device | str = "cpu",
        amp: bool = False,
        seed: int = 0,
        condition: torch.Tensor | None = None,
        overwrite: bool = False,
        verbose: bool = False,
    ) -> None:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.autoencoder = autoencoder
        self.diffusion_model = diffusion_model
        self.inferer = inferer
        self.scheduler = scheduler
        self.num_samples = int(num_samples)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.output_dir = Path(output_dir)
        self.affine = np.asarray(affine, dtype=float)
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.label_ids = [int(i) for i in label_ids]
        self.min_fraction = min_fraction
        self.min_voxels = min_voxels
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.amp = amp
        self.seed = seed
        self.condition = condition
        self.overwrite = overwrite
        self.verbose = verbose

    @property
    def datalist_path(self) -> Path:
        return self.output_dir / "datalist.json"

    @staticmethod
    def case_id(index: int) -> str:
        """Folder name of the ``index``-th pair: ``synth_0000``, ``synth_0001``, ..."""
        return f"synth_{index:04d}"

    def case_files(self) -> list[Path]:
        """The NIfTI files :meth:`run` writes: ``<output_dir>/<case_id>/{image,label}.nii.gz``."""
        return [self.output_dir / self.case_id(i) / name for i in range(self.num_samples)
                for name in ("image.nii.gz", "label.nii.gz")]

    @torch.no_grad()
    def sample_batch(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` pairs: images ``(n, H, W, D)`` in HU (float32) and cleaned labels ``(n, H, W, D)`` (uint8)."""
        noise = torch.randn((n, *self.latent_shape), generator=generator).to(self.device)
        kwargs = {}
        if self.condition is not None:
            kwargs["conditioning"] = self.condition.to(self.device).repeat(n, *([1] * (self.condition.dim() - 1)))
        self.autoencoder.eval()
        self.diffusion_model.eval()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda"):
            out = self.inferer.sample(input_noise=noise, autoencoder_model=self.autoencoder,
                                      diffusion_model=self.diffusion_model, scheduler=self.scheduler,
                                      verbose=self.verbose, **kwargs)
        out = out.float().cpu()
        images = unit_to_hu(out[:, 0], self.a_min, self.a_max).numpy().astype(np.float32)
        labels = out[:, 1:].argmax(dim=1).numpy().astype(np.uint8)
        labels = np.stack([remove_small_fragments(lab, self.label_ids, self.min_fraction, self.min_voxels)
                           for lab in labels])
        return images, labels

    def run(self) -> Path:
        """Sample and write all pairs; returns the datalist path."""
        refuse_overwrite([self.datalist_path, *self.case_files()], self.overwrite)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(int(self.seed))
        entries = []
        done = 0
        while done < self.num_samples:
            n = min(self.batch_size, self.num_samples - done)
            images, labels = self.sample_batch(n, generator)
            for image, label in zip(images, labels):
                case_id = self.case_id(done)
                case_dir = self.output_dir / case_id
                case_dir.mkdir(parents=True, exist_ok=True)
                save_atomic(nib.Nifti1Image(image, self.affine), case_dir / "image.nii.gz")
                save_atomic(nib.Nifti1Image(label, self.affine), case_dir / "label.nii.gz")
                entries.append({"case_id": case_id, "image": f"{case_id}/image.nii.gz",
                                "label": f"{case_id}/label.nii.gz", "synthetic": True})
                done += 1
            logger.info(f"sampled {done}/{self.num_samples} synthetic pairs")
        self.datalist_path.write_text(json.dumps({"training": entries}, indent=2))
        return self.datalist_path

"""The aorta segmenter of NCCT-only inference: a 2D MONAI network run over the axial slices of a volume.

AortaDiff needs the aorta mask (its ROI is the aorta dilated by ``roi_margin``). When the user has only the
NCCT, the bundle finds the aorta itself with a network trained by ``configs/train_aorta_seg.json`` on the
datalist's ``ncct`` / ``aorta`` pairs (stock ``SupervisedTrainer``; weights ``models/aorta_seg.pt``).

* :class:`AortaSliceInferer`: ``(B, 1, H, W, D)`` windowed NCCT -> ``(B, K, H, W, D)`` logits; every axial slice
  is resized to ``image_size`` (the size the network was trained at), passed through the network in batches
  of ``slice_batch_size``, and the logits are resized back to ``(H, W)``. Used for validation in training
  and at inference, so both see the same thing.
* :class:`AortaSegmenter`: NCCT in HU ``(1, H, W, D)`` -> aorta mask ``(1, H, W, D)`` uint8 (argmax, largest
  connected component). Its weights are read when first needed (and again when the file changes, e.g. after
  training from MONAI Label); a missing checkpoint, one that does not fit, or a scan where it finds no aorta is
  a one-line :class:`~tools.engines.errors.BundleInputError` naming the file.
* :meth:`AortaSegmenter.segment_entries`: the inference check step: segments every entry that has no aorta
  mask before anything is written, and keeps the masks for :class:`SegmentAortad` (the preprocessing
  transform that puts the mask under ``aorta``).
* :func:`segmentation_entries`: ``{"image": ncct, "label": aorta}`` entries of a datalist split for training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    KeepLargestConnectedComponent,
    LoadImaged,
    MapTransform,
    Orientationd,
    ScaleIntensityRange,
)

from tools.data.datalist import load_datalist
from tools.data.transforms import like
from tools.engines.checkpoint_io import check_checkpoint_fits, load_network
from tools.engines.errors import InputValueError

__all__ = ["AortaSliceInferer", "AortaSegmenter", "SegmentAortad", "segmentation_entries"]


class AortaSliceInferer(Inferer):
    """Run a 2D network over the axial slices (last axis) of ``(B, C, H, W, D)`` volumes at ``image_size``.

    ``(B, C, H, W)`` slices go through as they are (resized when not ``image_size``). Returns the logits on
    the input grid, ``(B, K, H, W[, D])``, float32.
    """

    def __init__(self, image_size: int | Sequence[int], slice_batch_size: int = 32) -> None:
        super().__init__()
        size = (int(image_size),) * 2 if isinstance(image_size, (int, np.integer)) else tuple(int(s) for s in image_size)
        self.image_size = size
        self.slice_batch_size = max(1, int(slice_batch_size))

    def _run_2d(self, x: torch.Tensor, network: Callable) -> torch.Tensor:
        h, w = x.shape[-2:]
        outs = []
        for start in range(0, x.shape[0], self.slice_batch_size):
            block = x[start:start + self.slice_batch_size]
            if (h, w) != self.image_size:
                block = F.interpolate(block, size=self.image_size, mode="bilinear", align_corners=False)
            logits = network(block).float()
            if (h, w) != self.image_size:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            outs.append(logits)
        return torch.cat(outs)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = (inputs.as_tensor() if isinstance(inputs, MetaTensor) else torch.as_tensor(inputs)).float()
        if x.ndim == 4:
            return self._run_2d(x, network)
        if x.ndim != 5:
            raise ValueError(f"AortaSliceInferer: expected (B, C, H, W[, D]) input, got shape {tuple(x.shape)}")
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        out = self._run_2d(slices, network)
        return out.reshape(b, d, -1, h, w).permute(0, 2, 3, 4, 1)


class AortaSegmenter:
    """Aorta mask of an NCCT volume from a trained 2D network (see the module docstring).

    Args:
        network: the segmenter (``configs/train_aorta_seg.json``'s ``network_def``: 1 channel in, 2 out).
        checkpoint: its weights (a plain state dict as ``CheckpointSaver`` writes, or ``{"model": ...}``).
        image_size, slice_batch_size: as in :class:`AortaSliceInferer`.
        a_min, a_max: HU window mapped to [-1, 1] (the training's ``ScaleIntensityRanged``).
        device: where the network runs.
        config_key: the config key naming ``checkpoint`` (for error messages).
    """

    def __init__(self, network: torch.nn.Module, checkpoint: str | os.PathLike, image_size: int = 256,
                 a_min: float = -200.0, a_max: float = 600.0, slice_batch_size: int = 32,
                 device: torch.device | str = "cpu", config_key: str = "aorta_seg_checkpoint") -> None:
        self.network = network
        self.checkpoint = Path(checkpoint)
        self.device = torch.device(device)
        self.config_key = config_key
        self.window = ScaleIntensityRange(a_min, a_max, -1.0, 1.0, clip=True)
        self.inferer = AortaSliceInferer(image_size, slice_batch_size)
        self.largest = KeepLargestConnectedComponent(applied_labels=[1])
        self._loaded: float | None = None
        self._masks: dict[str, torch.Tensor] = {}

    def load(self) -> None:
        """Read the weights (checked to fit the network) unless the file is unchanged since the last read."""
        if not self.checkpoint.is_file():
            raise InputValueError(
                f"no aorta mask given and the aorta segmenter's weights '{self.checkpoint}' (key '{self.config_key}') "
                "do not exist: give the mask (--input_aorta FILE, e.g. TotalSegmentator's map with --aorta_label 52) "
                "or train the segmenter (configs/train_aorta_seg.json)")
        mtime = self.checkpoint.stat().st_mtime
        if self._loaded == mtime:
            return
        check_checkpoint_fits(self.checkpoint, self.network, config_key=self.config_key)
        self.network = load_network(self.network, self.checkpoint, self.device)
        self._loaded = mtime

    @torch.no_grad()
    def __call__(self, ncct_hu: torch.Tensor, source: str = "the NCCT") -> torch.Tensor:
        """Aorta mask ``(1, H, W, D)`` uint8 (like ``ncct_hu``: a MetaTensor keeps its metadata) of an NCCT in HU.

        Raises:
            InputValueError: the weights are missing or do not fit; the segmenter finds no aorta in ``source``.
        """
        self.load()
        x = self.window(torch.as_tensor(ncct_hu).float())
        x = (x.as_tensor() if isinstance(x, MetaTensor) else x).to(self.device)
        logits = self.inferer(x[None], self.network)[0]
        mask = (logits.argmax(0, keepdim=True) == 1).to(torch.uint8).cpu()
        mask = torch.as_tensor(self.largest(mask)).to(torch.uint8)
        if not bool(mask.any()):
            raise InputValueError(
                f"the aorta segmenter ('{self.checkpoint}') found no aorta in NCCT '{source}': give the aorta mask "
                "with --input_aorta FILE (e.g. TotalSegmentator's map with --aorta_label 52), or retrain the "
                "segmenter on scans like this one")
        return like(ncct_hu, mask)

    def segment_entries(self, entries: Sequence[dict], axcodes: str = "RAS") -> None:
        """Segment every entry of ``entries`` (``image`` = NCCT path) that has no ``aorta``, as the inference
        preprocessing sees it (loaded, channel first, ``Orientationd(axcodes)``), and keep the masks for
        :class:`SegmentAortad`. The inference check step: a scan without a found aorta stops the run here,
        before anything is written."""
        todo = [e for e in entries if not e.get("aorta")]
        if not todo:
            return
        load = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                        Orientationd("image", axcodes=axcodes)])
        for e in todo:
            path = str(e["image"])
            self._masks[path] = self(load({"image": path})["image"], source=path)

    def mask_for(self, ncct_hu: torch.Tensor, path: str | None) -> torch.Tensor:
        """The mask :meth:`segment_entries` kept for ``path`` (taken out), else a new segmentation."""
        if path is not None and path in self._masks:
            return like(ncct_hu, self._masks.pop(path))
        return self(ncct_hu, source=path or "the NCCT")


class SegmentAortad(MapTransform):
    """Put the aorta mask under ``output_key`` when the data has none: the segmenter's mask of ``keys``' NCCT
    (in HU, after ``Orientationd``). Entries that hold a mask (given by the user) pass unchanged.

    Args:
        keys: the NCCT key (one).
        segmenter: an :class:`AortaSegmenter`.
        path_key: key of the NCCT file path (to find the mask :meth:`AortaSegmenter.segment_entries` made).
    """

    def __init__(self, keys: str, segmenter: AortaSegmenter, output_key: str = "aorta",
                 path_key: str = "ncct_path") -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError("SegmentAortad: exactly one NCCT key expected")
        self.segmenter, self.output_key, self.path_key = segmenter, output_key, path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if isinstance(d.get(self.output_key), torch.Tensor):
            return d
        key = self.keys[0]
        image = d[key]
        path = d.get(self.path_key)
        if not path and isinstance(image, MetaTensor):
            path = image.meta.get("filename_or_obj")
        d[self.output_key] = self.segmenter.mask_for(image, str(path) if path else None)
        return d


def segmentation_entries(datalist: str | os.PathLike, split: str, image_key: str = "ncct",
                         mask_key: str = "aorta") -> list[dict]:
    """``{"image": <ncct>, "label": <aorta>, "case_id"}`` for every entry of ``split`` (MONAI Label's training
    pairs have the same keys, so the training config reads both alike)."""
    out = []
    for i, e in enumerate(load_datalist(datalist, split, required_keys=(image_key, mask_key))):
        out.append({"image": e[image_key], "label": e[mask_key],
                    "case_id": Path(str(e.get("case_id", f"case_{i:03d}"))).name})
    return out


def evaluate_segmenter(config_file: str | Sequence[str], split: str = "test", output: str | None = None,
                       **overrides: Any) -> dict:
    """Dice of the trained segmenter's mask against the reference aorta of every case of ``split``.

    ``config_file``: ``train_aorta_seg.json`` (+ the deltas it was trained with), ``overrides`` as on the
    training command line (e.g. ``ckpt_dir``); the weights are ``ckpt_dir/model_filename``. Returns (and
    writes to ``output`` as JSON) ``{"split", "checkpoint", "cases": {case_id: dice}, "mean_dice", "min_dice"}``.
    Masks are compared as the inference pipeline sees them (RAS, the input grid).
    """
    import json

    from monai.bundle import ConfigParser

    from tools.metrics.overlap import mask_dice

    parser = ConfigParser()
    parser.read_config([config_file] if isinstance(config_file, str) else list(config_file))
    parser.update(overrides)
    checkpoint = Path(parser.get_parsed_content("ckpt_dir")) / parser.get_parsed_content("model_filename")
    segmenter = AortaSegmenter(parser.get_parsed_content("network_def"), checkpoint,
                               parser.get_parsed_content("image_size"), parser.get_parsed_content("a_min"),
                               parser.get_parsed_content("a_max"), parser.get_parsed_content("slice_batch_size"),
                               config_key="ckpt_dir")
    label = int(parser.get_parsed_content("aorta_label"))
    load = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                    Orientationd(["image", "label"], axcodes="RAS")])
    cases = {}
    for e in segmentation_entries(parser.get_parsed_content("datalist"), split):
        d = load(e)
        ref = (d["label"].round() == label) if label else (d["label"] > 0)
        try:
            found = np.asarray(segmenter(d["image"], e["image"])) > 0
        except InputValueError:  # found no aorta: scored as a miss
            found = np.zeros(ref.shape, dtype=bool)
        cases[e["case_id"]] = float(mask_dice(found, ref.numpy()))
    result = {"split": split, "checkpoint": str(checkpoint), "cases": cases,
              "mean_dice": float(np.mean(list(cases.values()))), "min_dice": float(np.min(list(cases.values())))}
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    import fire

    fire.Fire({"evaluate": evaluate_segmenter})

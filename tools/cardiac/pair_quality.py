"""How well a generated image and its generated label agree, and segmentations for the figures.

A generated pair is worth training on when its label sits on the structures of its image. Measured here as the
Dice between the generated label and what a segmenter trained on real data only predicts on the generated image
(per structure, the same Dice as the test table). The segmenter, its preprocessing and its sliding-window
inferer come from the bundle's own configs (``common.json`` + ``train.json`` + deltas), so the generated
volumes go through exactly the transforms of the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tools.cardiac.dice_table import CARDIAC_STRUCTURES
from tools.figures.slices import most_structures_slice

__all__ = ["BundleSegmenter", "per_structure_dice", "pair_agreement"]


def per_structure_dice(pred: np.ndarray, label: np.ndarray, num_classes: int = 9) -> np.ndarray:
    """Dice of each foreground class (1..num_classes-1); NaN where the class is in neither volume."""
    out = np.full(num_classes - 1, np.nan)
    for c in range(1, num_classes):
        p, g = pred == c, label == c
        denom = p.sum() + g.sum()
        if denom:
            out[c - 1] = 2.0 * np.logical_and(p, g).sum() / denom
    return out


class BundleSegmenter:
    """The fine-tuned U-Net of one run with the test-split preprocessing of the bundle configs."""

    def __init__(self, config_files: Sequence[str], checkpoint: str | Path, **overrides) -> None:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(f) for f in config_files])
        parser.update({**overrides, "run_missing_stages": False})
        self.datalist = parser.get_parsed_content("datalist")
        self.preprocessing = parser.get_parsed_content("validate#preprocessing")
        self.inferer = parser.get_parsed_content("validate#inferer")
        self.network = parser.get_parsed_content("network_def").cpu().eval()
        from tools.engines.checkpoint_io import load_checkpoint

        self.network.load_state_dict(load_checkpoint(checkpoint, key="model", accept_state_dict=True))

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> np.ndarray:
        """Label map predicted on a model-grid image in [0, 1] (H, W, D)."""
        img = torch.as_tensor(image, dtype=torch.float32)[None, None]
        return self.inferer(img, self.network).argmax(1)[0].numpy().astype(np.int64)

    def model_grid(self, entry: dict) -> tuple[np.ndarray, np.ndarray]:
        """(image [0, 1], label) of one datalist entry on the model grid (test-split preprocessing), each (H, W, D)."""
        d = self.preprocessing(dict(entry))
        return np.asarray(d["image"])[0].astype(np.float32), np.asarray(d["label"])[0].astype(np.int64)

    def __call__(self, entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image [0, 1], label, prediction) of one datalist entry on the model grid, each (H, W, D)."""
        image, label = self.model_grid(entry)
        return image, label, self.predict(image)


class BundleAutoencoder:
    """The trained joint VAE of stage 1: ``(image, label) -> (reconstructed image, reconstructed label)``."""

    def __init__(self, config_files: Sequence[str], checkpoint: str | Path, **overrides) -> None:
        from monai.bundle import ConfigParser

        from tools.engines.checkpoint_io import load_checkpoint

        parser = ConfigParser()
        parser.read_config([str(f) for f in config_files])
        parser.update(overrides)
        self.num_classes = int(parser.get_parsed_content("num_classes"))
        self.network = parser.get_parsed_content("autoencoder_def").cpu().eval()
        self.network.load_state_dict(load_checkpoint(checkpoint, key="model"))

    @torch.no_grad()
    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from tools.cardiac.joint_vae import reconstruct_from_mean

        img = torch.as_tensor(image, dtype=torch.float32)[None, None]
        onehot = torch.nn.functional.one_hot(torch.as_tensor(label).long(), self.num_classes)
        joint = torch.cat([img, onehot.permute(3, 0, 1, 2)[None].float()], 1)
        out = reconstruct_from_mean(joint, self.network)
        return out[0, 0].numpy(), out[0, 1:].argmax(0).numpy()


def pair_agreement(segmenter: BundleSegmenter, entries: Sequence[dict]) -> dict:
    """Per-structure Dice (mean over pairs, NaN-aware) between generated labels and the segmenter's predictions."""
    if not entries:
        return {}
    rows = []
    for e in entries:
        _, label, pred = segmenter(e)
        rows.append(per_structure_dice(pred, label))
    rows = np.stack(rows)
    names = list(CARDIAC_STRUCTURES.values())
    with np.errstate(all="ignore"):
        per = np.nanmean(rows, axis=0)
    table = {n: (None if np.isnan(v) else round(float(v), 4)) for n, v in zip(names, per)}
    case_means = np.nanmean(rows, axis=1)
    table["mean"] = round(float(np.nanmean(case_means)), 4)
    table["per_pair_mean"] = [None if np.isnan(v) else round(float(v), 4) for v in case_means]
    return table


# ------------------------------------------------------------------------------------------------- figures
NAMES = dict(CARDIAC_STRUCTURES)


def _show(ax, image: np.ndarray, label: np.ndarray | None, title: str) -> None:
    """One axial slice of a RAS model-grid volume, radiological view (patient right on the left, anterior up)."""
    import matplotlib.pyplot as plt

    ax.imshow(image.T[::-1, ::-1], cmap="gray", vmin=0.0, vmax=1.0)  # [0, 1] = the window a_min..a_max (-200..600 HU)
    if label is not None:
        lab = label.T[::-1, ::-1]
        ax.imshow(np.ma.masked_where(lab == 0, lab), cmap=plt.get_cmap("tab10", 9), vmin=-0.5, vmax=8.5, alpha=0.5,
                  interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _legend(fig) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    handles = [matplotlib.patches.Patch(color=plt.get_cmap("tab10", 9)(i), label=n) for i, n in NAMES.items()]
    fig.legend(handles=handles, loc="lower center", ncol=8, fontsize=8, frameon=False)


def pairs_figure(segmenter: BundleSegmenter, synthetic: Sequence[dict], real: dict, out: str | Path,
                 n: int = 4, autoencoder: BundleAutoencoder | None = None) -> Path:
    """Columns: a real training case (and its VAE reconstruction), then ``n`` generated pairs; rows: image, its
    label, the segmenter's prediction on the image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("real", real)] + (["vae"] if autoencoder is not None else [])
    rows += [(str(e.get("case_id", f"generated {i}")), e) for i, e in enumerate(synthetic[:n])]
    fig, axes = plt.subplots(3, len(rows), figsize=(2.0 * len(rows), 6.6))
    axes = np.asarray(axes).reshape(3, len(rows))
    real_volumes = segmenter(real)
    for j, row in enumerate(rows):
        if row == "vae":  # the real case through the VAE (encode to the mean latent, decode), its own prediction
            img, lab = autoencoder(real_volumes[0], real_volumes[1])
            name, pred = "VAE recon.", segmenter.predict(img)
        else:
            name, entry = row
            img, lab, pred = segmenter(entry)
        k = most_structures_slice(lab)
        dice = np.nanmean(per_structure_dice(pred, lab))
        _show(axes[0, j], img[:, :, k], None, f"{name}: image")
        _show(axes[1, j], img[:, :, k], lab[:, :, k], "its label")
        _show(axes[2, j], img[:, :, k], pred[:, :, k], f"segmenter (Dice {dice:.2f})")
    _legend(fig)
    fig.suptitle("Real case, its VAE reconstruction, generated pairs: image, (generated) label, real-data segmenter on "
                 "the image", fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def segmentations_figure(segmenters: dict, case: dict, out: str | Path) -> Path:
    """One real test case: image, ground truth and each named segmenter's prediction (with its mean Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(segmenters.values()))
    img, lab, _ = first(case)
    k = most_structures_slice(lab)
    fig, axes = plt.subplots(1, 2 + len(segmenters), figsize=(2.3 * (2 + len(segmenters)), 3.0))
    _show(axes[0], img[:, :, k], None, "test case")
    _show(axes[1], img[:, :, k], lab[:, :, k], "ground truth")
    for ax, (name, seg) in zip(axes[2:], segmenters.items()):
        _, _, pred = seg(case)
        _show(ax, img[:, :, k], pred[:, :, k], f"{name} ({np.nanmean(per_structure_dice(pred, lab)):.2f})")
    _legend(fig)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

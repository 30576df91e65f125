"""Evaluation of a mask-to-CT diffusion model at several checkpoints in one run.

For every checkpoint, synthetic slices are sampled for the evaluation label maps and compared with the
real slices: PSNR and SSIM (MONAI ``PSNRMetric`` / ``SSIMMetric`` on [0, 1]), FID (MONAI ``FIDMetric`` on
the features of a local ImageNet network, :mod:`tools.abdomen.fid_features`; skipped with a logged
reason when its weights are absent), the weight-free Fréchet texture distance FTD (always;
:mod:`tools.abdomen.texture_distance`) and the per-organ Dice of a downstream 2D segmenter (trained by the
bundle's ``train_segmenter.json``) applied to the synthetic slices against the conditioning organ mask
(skipped with a logged reason when the segmenter checkpoint is absent). The segmenter's Dice on the real
slices is reported as the reference row ``real``.

Outputs in ``output_dir``: ``metrics.csv`` and ``metrics.json`` (one row per checkpoint), ``metrics.png``
(metrics against training iteration) and ``samples_<checkpoint>.png`` (mask | synthetic | real) with its arrays in
``samples_<checkpoint>.npz``. Diffusion models and the GAN baselines go through the same class: only the sampler
differs (``sampler(onehot, network) -> image``).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from monai.metrics import DiceMetric, FIDMetric, PSNRMetric, SSIMMetric

from tools.abdomen.fid_features import load_fid_feature_network
from tools.abdomen.figures import save_grid
from tools.abdomen.labels import BODY_ID
from tools.abdomen.segmenter_comparison import add_segmenter_dice, organ_dice
from tools.abdomen.texture_distance import frechet_texture_distance, texture_features
from tools.engines.checkpoint_io import load_checkpoint, load_network
from tools.engines.output_guard import refuse_overwrite

__all__ = ["find_checkpoints", "checkpoint_tag", "drop_duplicate_weights", "unit_range", "SynthesisCheckpointEvaluation"]

logger = logging.getLogger(__name__)


def unit_range(fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic and real slices from the model's [-1, 1] to the [0, 1] that PSNR and SSIM score (synthetic clipped)."""
    return (fake.clamp(-1, 1) + 1) / 2, (real + 1) / 2


def checkpoint_tag(path: str | Path) -> str:
    """'checkpoint_iteration=50000.pt' -> '50000'; other names -> their stem."""
    m = re.search(r"iteration=(\d+)", Path(path).name)
    return m.group(1) if m else Path(path).stem


def find_checkpoints(checkpoints: str | Sequence[str]) -> list[str]:
    """Expand a folder, a glob or a list into checkpoint files, periodic ones sorted by iteration, then the rest.

    A folder means ``checkpoint_iteration=*.pt`` plus ``model.pt`` inside it.
    Raises ``FileNotFoundError`` naming what matched nothing.
    """
    items = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    found: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            hits = glob.glob(str(p / "checkpoint_iteration=*.pt")) + ([str(p / "model.pt")] if (p / "model.pt").is_file() else [])
        elif any(c in str(item) for c in "*?["):
            hits = glob.glob(str(item))
        else:
            hits = [str(p)] if p.is_file() else []
        if not hits:
            raise FileNotFoundError(f"evaluate: checkpoint(s) '{item}' (key 'checkpoints') not found")
        found.extend(hits)

    def order(f: str) -> tuple[int, int, str]:
        tag = checkpoint_tag(f)
        return (0, int(tag), f) if tag.isdigit() else (1, 0, f)

    return sorted(dict.fromkeys(found), key=order)


def _weights_fingerprint(path: str) -> str:
    """Hash of the ``"model"`` weights of a checkpoint (to drop a final model.pt equal to the last periodic one)."""
    state = load_checkpoint(path, "model", accept_state_dict=True)
    h = hashlib.sha1()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def drop_duplicate_weights(files: Sequence[str]) -> list[str]:
    """Keep the first of checkpoints whose weights are identical (e.g. model.pt = checkpoint_iteration=150000.pt)."""
    seen: set[str] = set()
    kept = []
    for f in files:
        fp = _weights_fingerprint(f)
        if fp in seen:
            logger.info("evaluate: %s skipped, same weights as an earlier checkpoint", f)
            continue
        seen.add(fp)
        kept.append(f)
    return kept


class SynthesisCheckpointEvaluation:
    """Sample and score a diffusion model at each checkpoint (see module docstring).

    Args:
        network: the diffusion network (weights replaced from each checkpoint's ``"model"`` entry).
        sampler: ``sampler(onehot (N, K, S, S), network) -> (N, 1, S, S)`` in [-1, 1].
        dataloader: batches with ``image`` (N, 1, S, S) in [-1, 1] and ``label`` one-hot (N, K, S, S).
        checkpoints: folder, glob or list of checkpoint files (see :func:`find_checkpoints`).
        output_dir: where the tables and figures go.
        device: torch device.
        segmenter: optional 2D segmentation network (1 -> 16 channels: background + 15 organs).
        segmenter_checkpoint: its weights (``"model"`` entry); Dice is skipped when the file is absent.
        fid_network: name in :data:`tools.abdomen.fid_features.FID_NETWORKS`, or None to skip FID.
        num_grid_slices: rows of the sample figure.
        a_min, a_max: HU window of the model range (for the figures only).
        overwrite: replace existing ``metrics.csv`` / ``metrics.json``.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        sampler,
        dataloader,
        checkpoints: str | Sequence[str],
        output_dir: str,
        device: str | torch.device = "cpu",
        segmenter: torch.nn.Module | None = None,
        segmenter_checkpoint: str | None = None,
        fid_network: str | None = "inception_v3",
        num_grid_slices: int = 6,
        a_min: float = -160.0,
        a_max: float = 240.0,
        overwrite: bool = False,
    ) -> None:
        self.network = network
        self.sampler = sampler
        self.dataloader = dataloader
        self.checkpoints = checkpoints
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.segmenter = segmenter
        self.segmenter_checkpoint = segmenter_checkpoint
        self.fid_network = fid_network
        self.num_grid_slices = num_grid_slices
        self.a_min, self.a_max = a_min, a_max
        self.overwrite = overwrite

    # ------------------------------------------------------------------ helpers
    def _load_segmenter(self) -> torch.nn.Module | None:
        if self.segmenter is None:
            logger.warning("Dice skipped: no segmenter configured")
            return None
        if not self.segmenter_checkpoint or not Path(self.segmenter_checkpoint).is_file():
            logger.warning(
                "Dice skipped: segmenter checkpoint '%s' is absent; train it with configs/train_segmenter.json",
                self.segmenter_checkpoint,
            )
            return None
        return load_network(self.segmenter, self.segmenter_checkpoint, self.device, accept_state_dict=True)

    @staticmethod
    def _organ_target(onehot: torch.Tensor) -> torch.Tensor:
        """One-hot (N, 17, S, S) with body -> organ index map (N, 1, S, S), body as background."""
        lab = onehot.argmax(1, keepdim=True)
        return torch.where(lab == BODY_ID, torch.zeros_like(lab), lab)

    @staticmethod
    def _dice_values(metric: DiceMetric) -> dict[str, float]:
        """``dice_mean`` and ``dice_<organ>`` columns (organ names with underscores); resets ``metric``."""
        return {f"dice_{name.replace(' ', '_')}": v for name, v in organ_dice(metric).items()}

    # ------------------------------------------------------------------ main
    @torch.no_grad()
    def run(self) -> list[dict]:
        files = drop_duplicate_weights(find_checkpoints(self.checkpoints))
        out_csv, out_json = self.output_dir / "metrics.csv", self.output_dir / "metrics.json"
        refuse_overwrite([out_csv, out_json], self.overwrite)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        seg = self._load_segmenter()
        fid_net, reason = (None, "FID skipped: fid_network is None")
        if self.fid_network:
            fid_net, reason = load_fid_feature_network(self.fid_network, self.device)
        if fid_net is None:
            logger.warning(reason)
        rows: list[dict] = []
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)

        if seg is not None:  # reference: the segmenter on the real slices
            for batch in self.dataloader:
                add_segmenter_dice(dice, seg, batch["image"].to(self.device), self._organ_target(batch["label"].to(self.device)))
            rows.append({"checkpoint": "real", "iteration": "", **self._dice_values(dice)})

        for path in files:
            tag = checkpoint_tag(path)
            logger.info("evaluate: checkpoint %s", path)
            load_network(self.network, path, self.device)
            psnr, ssim = PSNRMetric(max_val=1.0), SSIMMetric(spatial_dims=2, data_range=1.0)
            feats_fake, feats_real = [], []
            tex_fake, tex_real = [], []
            grid = None
            for batch in self.dataloader:
                real = batch["image"].to(self.device).float()
                onehot = batch["label"].to(self.device).float()
                fake = self.sampler(onehot, self.network).float()
                fake01, real01 = unit_range(fake, real)
                psnr(fake01, real01)
                ssim(fake01, real01)
                tex_fake.append(texture_features(fake, onehot))
                tex_real.append(texture_features(real, onehot))
                if fid_net is not None:
                    feats_fake.append(fid_net(fake))
                    feats_real.append(fid_net(real))
                if seg is not None:
                    add_segmenter_dice(dice, seg, fake, self._organ_target(onehot))
                if grid is None:
                    grid = (onehot.argmax(1).cpu().numpy(), fake[:, 0].cpu().numpy(), real[:, 0].cpu().numpy())
            row = {
                "checkpoint": Path(path).name,
                "iteration": tag if tag.isdigit() else "",
                "psnr": float(psnr.aggregate()),
                "ssim": float(ssim.aggregate()),
                "fid": float(FIDMetric()(torch.cat(feats_fake), torch.cat(feats_real))) if fid_net is not None else float("nan"),
                "ftd": frechet_texture_distance(np.concatenate(tex_fake), np.concatenate(tex_real)),
                "num_slices": int(sum(len(t) for t in tex_real)),
            }
            if seg is not None:
                row.update(self._dice_values(dice))
            rows.append(row)
            logger.info("evaluate: %s", {k: v for k, v in row.items() if not k.startswith("dice_") or k == "dice_mean"})
            if grid is not None:
                self._save_samples(grid, self.output_dir / f"samples_{tag}.png")

        self._write(rows, out_csv, out_json, fid_reason=reason if fid_net is None else "")
        self._plot(rows, self.output_dir / "metrics.png")
        return rows

    def _save_samples(self, grid, path: Path) -> None:
        labels, fake, real = grid
        np.savez_compressed(path.with_suffix(".npz"), label=labels, synthetic=fake, real=real)
        n = min(self.num_grid_slices, labels.shape[0])

        def hu(x):
            return (np.clip(x, -1, 1) + 1) / 2 * (self.a_max - self.a_min) + self.a_min

        def show(x):  # slices are RAS [x, y]: anterior up, patient right on the left
            return np.asarray(x).T[::-1, ::-1]

        save_grid(
            path,
            [show(labels[i]) for i in range(n)],
            {"synthetic": [show(hu(fake[i])) for i in range(n)], "real": [show(hu(real[i])) for i in range(n)]},
            self.a_min,
            self.a_max,
        )

    @staticmethod
    def _write(rows: list[dict], out_csv: Path, out_json: Path, fid_reason: str) -> None:
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        with open(out_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        out_json.write_text(json.dumps({"rows": rows, "fid_note": fid_reason}, indent=2))

    @staticmethod
    def _plot(rows: list[dict], path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ckpt_rows = [r for r in rows if r["checkpoint"] != "real"]
        names = ["psnr", "ssim", "fid", "ftd", "dice_mean"]
        names = [n for n in names if any(np.isfinite(r.get(n, np.nan)) for r in ckpt_rows)]
        if not ckpt_rows or not names:
            return
        x = [r["iteration"] or r["checkpoint"] for r in ckpt_rows]
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), squeeze=False)
        for ax, n in zip(axes[0], names):
            ax.plot(range(len(x)), [r.get(n, np.nan) for r in ckpt_rows], marker="o")
            ax.set_xticks(range(len(x)), x, rotation=45, fontsize=7)
            ax.set_title(n)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

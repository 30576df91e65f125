"""Training-curve figures read real TensorBoard event files written by MONAI's handler."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from tools.figures.training_curves import plot_curves, read_scalars


def test_read_and_plot_scalars(tmp_path):
    w = SummaryWriter(str(tmp_path / "run"))
    for step in range(1, 6):
        w.add_scalar("loss", 1.0 / step, step)
    w.add_scalar("val_dice", 0.5, 5)
    w.close()
    s = read_scalars(tmp_path / "run")
    np.testing.assert_array_equal(s["loss"][0], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(s["loss"][1], [1, 0.5, 1 / 3, 0.25, 0.2], rtol=1e-6)
    out = plot_curves({"tiny": str(tmp_path / "run")}, ["loss", "val_dice"], str(tmp_path / "c.png"), smooth=2)
    assert out.stat().st_size > 5000
    with pytest.raises(ValueError, match="tag 'psnr' not found"):
        plot_curves({"tiny": str(tmp_path / "run")}, ["psnr"], str(tmp_path / "d.png"))
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        read_scalars(tmp_path / "empty")

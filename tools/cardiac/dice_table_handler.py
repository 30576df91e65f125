"""Ignite handler writing the per-structure Dice table (Hu et al., Table 1 layout) after evaluation.

Reads the per-case, per-structure Dice that MONAI's ``MeanDice`` handler keeps in
``engine.state.metric_details[metric_name]`` (``save_details=True``, background excluded) and writes
CSV/JSON/PNG through :func:`tools.cardiac.dice_table.save_dice_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from tools.cardiac.dice_table import CARDIAC_STRUCTURES, TABLE1_ORDER, dice_table, save_dice_table

__all__ = ["DiceTableHandler"]


class DiceTableHandler:
    """At ``Events.COMPLETED`` write ``dice_table.csv/json`` and ``dice_bar.png`` to ``output_dir``."""

    def __init__(self, output_dir: str | Path, metric_name: str = "test_mean_dice",
                 structure_names: Sequence[str] = tuple(CARDIAC_STRUCTURES.values()),
                 order: Sequence[str] = TABLE1_ORDER, title: str = "Dice on the test split") -> None:
        self.output_dir = Path(output_dir)
        self.metric_name = metric_name
        self.structure_names = list(structure_names)
        self.order = list(order)
        self.title = title
        self.table: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        details = getattr(engine.state, "metric_details", {}).get(self.metric_name)
        if details is None:
            raise ValueError(f"evaluator has no metric details for '{self.metric_name}' "
                             "(use MeanDice with save_details=True and include_background=False)")
        per_case = details.detach().cpu().numpy() if isinstance(details, torch.Tensor) else np.asarray(details)
        per_case = per_case.reshape(per_case.shape[0], -1)
        self.table = dice_table(per_case, self.structure_names, self.order)
        save_dice_table(self.table, self.output_dir, per_case, None, self.structure_names, self.title)
        engine.logger.info("Dice (Table 1 layout): " + ", ".join(
            f"{k} {'absent' if v is None else f'{v:.3f}'}" for k, v in self.table.items()))

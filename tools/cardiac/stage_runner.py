"""Run the earlier stages of a multi-stage bundle whose outputs are missing (fresh install -> full pipeline).

The cardiac LDM bundle's segmentation training (``train.json``) needs the SSL-pretrained encoder and
the synthetic pairs, which come from four earlier configs. With ``run_missing_stages`` (default) the
training run first executes, in order, every stage whose output file does not exist yet, through
``monai.bundle.run`` with the same top-level overrides (and optional delta files such as the small CPU
variant); stages whose output exists are skipped, so nothing is overwritten.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MissingStageRunner"]

logger = logging.getLogger(__name__)


class MissingStageRunner:
    """Run ``stages`` = ``[(config file name, output path), ...]`` whose output is missing.

    Args:
        configs_dir: folder of the stage config files.
        stages: ordered (config file, output it writes) pairs.
        needed: False skips everything (e.g. the ``scratch`` baseline needs no earlier stage).
        overrides: top-level keys passed to every stage (``bundle_root``, ``image_size``, ...).
        deltas: extra config files merged over each stage config (e.g. ``small.json``).
    """

    def __init__(self, configs_dir: str | Path, stages: Sequence[Sequence[str]], needed: bool = True,
                 overrides: Mapping[str, Any] | None = None, deltas: Sequence[str] | None = None) -> None:
        self.configs_dir = Path(configs_dir)
        self.stages = [(str(c), str(o)) for c, o in stages]
        self.needed = bool(needed)
        self.overrides = dict(overrides or {})
        self.deltas = [str(d) for d in (deltas or [])]

    def missing(self) -> list[tuple[str, str]]:
        return [(c, o) for c, o in self.stages if not Path(o).exists()]

    def run(self) -> list[str]:
        """Run the missing stages in order; returns the config names that ran."""
        from monai.bundle import run as bundle_run

        if not self.needed:
            return []
        ran = []
        for config, output in self.stages:
            if Path(output).exists():
                logger.info(f"stage {config}: output '{output}' exists, skipped")
                continue
            path = self.configs_dir / config
            if not path.is_file():
                raise FileNotFoundError(f"stage config '{path}' does not exist")
            logger.info(f"stage {config}: output '{output}' missing, running it")
            bundle_run(run_id="run", config_file=[str(path)] + self.deltas, **self.overrides)
            if not Path(output).exists():
                raise FileNotFoundError(f"stage {config} finished without writing '{output}'")
            ran.append(config)
        return ran

"""Run the earlier stages of a multi-stage bundle whose outputs are missing (fresh install -> full pipeline).

The cardiac LDM bundle's segmentation training (``train.json``) needs the SSL-pretrained encoder and
the synthetic pairs, which come from four earlier configs. With ``run_missing_stages`` (default) the
training run first executes, in order, every stage whose output file does not exist yet, through
``monai.bundle.run`` with the config list ``base configs + stage config + deltas`` (the bundle's stages are
deltas over ``common.json``; deltas such as the small CPU variant follow the stage) and the same top-level
overrides; stages whose output exists are skipped, so nothing is overwritten.
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
        base_configs: config files (in ``configs_dir``) merged before every stage config, e.g. ``["common.json"]``.
        needed: False skips everything (e.g. the ``scratch`` baseline needs no earlier stage).
        overrides: top-level keys passed to every stage (``bundle_root``, ``image_size``, ...).
        deltas: extra config files merged over each stage config (e.g. ``small.json``).
    """

    def __init__(self, configs_dir: str | Path, stages: Sequence[Sequence[str]], needed: bool = True,
                 overrides: Mapping[str, Any] | None = None, deltas: Sequence[str] | None = None,
                 base_configs: Sequence[str] = ()) -> None:
        self.configs_dir = Path(configs_dir)
        self.stages = [(str(c), str(o)) for c, o in stages]
        self.base_configs = [str(b) for b in base_configs]
        self.needed = bool(needed)
        self.overrides = dict(overrides or {})
        self.deltas = [str(d) for d in (deltas or [])]

    def missing(self) -> list[tuple[str, str]]:
        """The (config, output) pairs whose output does not exist yet."""
        return [(c, o) for c, o in self.stages if not Path(o).exists()]

    def config_files(self, config: str) -> list[str]:
        """The config list one stage runs with: base configs, the stage config, then the deltas."""
        files = [self.configs_dir / c for c in (*self.base_configs, config)]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"stage {config}: config file(s) {absent} do not exist")
        return [str(f) for f in files] + self.deltas

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
            files = self.config_files(config)
            logger.info(f"stage {config}: output '{output}' missing, running it")
            bundle_run(run_id="run", config_file=files, **self.overrides)
            if not Path(output).exists():
                raise FileNotFoundError(f"stage {config} finished without writing '{output}'")
            ran.append(config)
        return ran

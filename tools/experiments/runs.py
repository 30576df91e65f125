"""What every experiment does with the bundles: run one bundle command in-process, and keep one record per
finished step so that a rerun skips it."""
from __future__ import annotations

import json
import time
from pathlib import Path


def bundle_run(configs_dir: str | Path, run_id: str, configs: list[str], **overrides) -> float:
    """``python -m monai.bundle run <run_id> --config_file [configs_dir/c ...] --<key> <value> ...`` in this process.

    The bundle's own ``logging.conf`` (in ``configs_dir``) is used. Returns the wall time in seconds.
    """
    from monai.bundle import run

    configs_dir = Path(configs_dir)
    t0 = time.perf_counter()
    run(run_id, config_file=[str(configs_dir / c) for c in configs], logging_file=str(configs_dir / "logging.conf"),
        **overrides)
    return time.perf_counter() - t0


def read_record(path: str | Path) -> dict | None:
    """The record of a finished step, or None when it is missing or unreadable (an unfinished step)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_records(work_dir: str | Path, pattern: str = "*/result.json") -> list[dict]:
    """Every readable record under ``work_dir`` matching ``pattern``, in path order."""
    return [r for r in (read_record(f) for f in sorted(Path(work_dir).glob(pattern))) if r is not None]

"""Save a bundle network as initialised (seeded, never trained), the reference that `make demo` evaluates.

    python -m tools.demo.untrained --config_file "['bundles/aortadiff_cect/configs/train.json','.../small.json']" \\
        --out runs/demo/aortadiff_cect/models/untrained.pt [--network_key network_def] [--key value ...]

The network is built from the bundle's own config (``network_key``, after ``--key value`` overrides) with
``monai.utils.set_determinism(seed)`` and saved as a plain state dict, the layout of ``models/model.pt``, so
the bundle's evaluation loads it with its usual ``CheckpointLoader`` / ``--model_filename``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["save_untrained"]


def save_untrained(config_file: str | list[str], out: str, network_key: str = "network_def", **overrides: Any) -> str:
    """Write the seeded, untrained ``network_key`` network of the merged configs to ``out``; returns ``out``."""
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(overrides)
    if network_key not in parser:
        raise ValueError(f"--network_key: '{network_key}' is not a key of {config_file}")
    set_determinism(seed=int(parser.get_parsed_content("seed", default=0)))
    net = parser.get_parsed_content(network_key)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, path)
    return str(path)


if __name__ == "__main__":
    import fire

    fire.Fire(save_untrained)

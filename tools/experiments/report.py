"""What every experiment writes beside its numbers: the machine, and its own section of docs/results.md."""
from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS_MD = REPO / "docs" / "results.md"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` says)."""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model and the vector instructions torch uses on it (e.g. AVX2, AVX512: CPU speeds differ by them),
    core count, load average, torch version and the accelerator, if any."""
    import torch

    info = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if hasattr(os, "getloadavg"):
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return info


def write_json(path: str | Path, payload: dict) -> Path:
    """Write ``payload`` as 4-space JSON with a final newline, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=4) + "\n")
    tmp.replace(path)
    return path


def repo_relative(obj, root: str | Path = REPO):
    """``obj`` with every string path under ``root`` written relative to it (a results file reads the same on
    every checkout); dicts, lists and tuples are walked, everything else is returned as it is."""
    prefix = str(Path(root).resolve()) + os.sep
    if isinstance(obj, str):
        return obj[len(prefix):] if obj.startswith(prefix) else obj
    if isinstance(obj, dict):
        return {k: repo_relative(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [repo_relative(v, root) for v in obj]
    return obj


def write_section(name: str, markdown: str, results_md: str | Path = RESULTS_MD) -> Path:
    """Replace the ``name`` section of results.md (between its begin/end markers), or append it.

    Each experiment owns one section, so reruns of one paper never touch another paper's text.
    """
    results_md = Path(results_md)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = results_md.read_text() if results_md.exists() else "# Results on phantoms\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    tmp = results_md.with_name(results_md.name + ".tmp")
    tmp.write_text(text.rstrip() + "\n")
    tmp.replace(results_md)
    return results_md

"""Run the demo's stages, at most ``jobs`` at a time, each with its output in its own log file.

A stage is ``python -m <module> <args>`` (:class:`tools.demo.plan.Stage`). By default each one runs in a
child forked from this process after torch and MONAI were imported once (``preload``), which saves the
few seconds of imports per stage; ``isolate=True`` (or a platform without ``fork``) starts a fresh
``python -m`` process instead. Either way the child's stdout and stderr go to ``<log_dir>/<stage>.log``
(the first line is the command), and the terminal gets one line per finished stage with the elapsed time.
A failed stage prints its log's path and tail; the stages that need it are skipped, the others go on.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.demo.plan import Stage

__all__ = ["StageResult", "preload", "run_stages", "tail"]


@dataclass
class StageResult:
    stage: Stage
    status: str  # "ok", "failed", "skipped"
    seconds: float
    log: Path
    cpu_s: float | None = None  # user + system CPU seconds of the stage's process (forked children only)


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def preload(log: Path) -> None:
    """Import what every stage imports (torch, MONAI, Ignite), with their import-time warnings sent to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(fh.fileno(), 1), os.dup2(fh.fileno(), 2)
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import ignite.engine  # noqa: F401
                import monai.bundle.scripts  # noqa: F401
                import monai.engines  # noqa: F401
                import monai.networks.nets  # noqa: F401
                import torch  # noqa: F401
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _child(stage: Stage, log: Path, threads: int) -> None:
    """Body of a forked child: become ``python -m <module> <args>`` with stdout/stderr in ``log``; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1), os.dup2(fd, 2)
        os.close(fd)
        os.environ.update(stage.env)
        import torch

        torch.set_num_threads(threads)
        sys.argv = [stage.module, *stage.args]
        try:
            runpy.run_module(stage.module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - report through the bundle's excepthook (one-line errors), then exit 1
            sys.excepthook(*sys.exc_info())
            code = 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)


class _Running:
    def __init__(self, stage: Stage, log: Path, start: float, pid: int | None = None,
                 proc: subprocess.Popen | None = None) -> None:
        self.stage, self.log, self.start, self.pid, self.proc = stage, log, start, pid, proc


def run_stages(stages: Sequence[Stage], log_dir: str | Path, jobs: int = 2, threads: int = 1, isolate: bool = False,
               echo: Callable[[str], None] = print, t0: float | None = None) -> list[StageResult]:
    """Run ``stages`` respecting ``needs``, ``jobs`` at a time; returns one result per stage, in plan order.

    Ready stages start in the order of their remaining critical path (the longest chain of ``estimate_s``
    that still depends on them), so the long bundles start first and the short ones fill the gaps.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter() if t0 is None else t0
    fork = hasattr(os, "fork") and not isolate
    by_key = {s.key: s for s in stages}

    def deps(s: Stage) -> list[str]:
        return [f"{s.bundle}.{n}" for n in s.needs if f"{s.bundle}.{n}" in by_key]

    memo: dict[str, float] = {}

    def chain(key: str) -> float:  # estimate of the longest path from this stage to the end
        if key not in memo:
            after = [s.key for s in stages if key in deps(s)]
            memo[key] = by_key[key].estimate_s + max((chain(k) for k in after), default=0.0)
        return memo[key]

    pending = sorted(stages, key=lambda s: -chain(s.key))
    results: dict[str, StageResult] = {}
    running: list[_Running] = []
    width = max(len(s.key) for s in stages) if stages else 10

    def line(r: StageResult) -> None:
        mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}[r.status]
        echo(f"[{time.perf_counter() - t0:5.0f} s] {r.stage.key:<{width}}  {mark:<7} {r.seconds:5.0f} s   {r.log}")
        if r.status == "failed":
            echo(f"    last lines of {r.log}:\n" + "\n".join("    | " + x for x in tail(r.log).splitlines()))

    def start(s: Stage) -> None:
        log = log_dir / f"{s.key}.log"
        log.write_text(f"$ {s.command()}\n\n")
        now = time.perf_counter()
        if fork:
            sys.stdout.flush(), sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(s, log, threads)
            running.append(_Running(s, log, now, pid=pid))
        else:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **s.env}
            with open(log, "a") as fh:
                proc = subprocess.Popen([sys.executable, "-m", s.module, *s.args], stdout=fh, stderr=subprocess.STDOUT,
                                        env=env)
            running.append(_Running(s, log, now, proc=proc))

    def finished() -> tuple[_Running, int, float | None]:
        while True:
            for r in running:
                if r.proc is not None and r.proc.poll() is not None:
                    return r, r.proc.returncode, None
            if any(r.pid is not None for r in running):
                pid, status, usage = os.wait4(-1, os.WNOHANG if any(r.proc for r in running) else 0)
                if pid:
                    r = next(x for x in running if x.pid == pid)
                    return r, os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
            time.sleep(0.2)

    while pending or running:
        for s in list(pending):
            if len(running) >= max(1, jobs):
                break
            d = deps(s)
            if any(results.get(k) and results[k].status != "ok" for k in d):
                pending.remove(s)
                results[s.key] = StageResult(s, "skipped", 0.0, log_dir / f"{s.key}.log")
                line(results[s.key])
                continue
            if all(k in results for k in d):
                pending.remove(s)
                start(s)
        if not running:
            if pending:  # needs that can never be met (a stage named a need that is not planned)
                for s in pending:
                    results[s.key] = StageResult(s, "skipped", 0.0, log_dir / f"{s.key}.log")
                    line(results[s.key])
                pending = []
            continue
        r, code, cpu = finished()
        running.remove(r)
        res = StageResult(r.stage, "ok" if code == 0 else "failed", time.perf_counter() - r.start, r.log, cpu)
        results[r.stage.key] = res
        line(res)
    return [results[s.key] for s in stages]

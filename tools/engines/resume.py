"""Resumable training: periodic full-state checkpoints, ``--resume auto``, and a guard for used run folders.

A training config attaches :class:`TrainingState` to its trainer with every object that changes while
training (network, EMA network, optimiser(s), LR scheduler, Kendall parameters, discriminator, ...); the
trainer itself (iteration, epoch) and its AMP grad scaler are added by the handler. Every ``interval``
iterations and at the end, it writes ``<save_dir>/<prefix>_checkpoint_<iteration>.pt`` through Ignite's
``Checkpoint`` with an atomic ``DiskSaver`` (temporary file, then rename: a kill never leaves a half-written
file), keeping the last ``n_saved`` files *this process* wrote; files of earlier (killed) processes of the
same run are never deleted or rewritten. These files are separate from ``model.pt`` (the network alone).

``resume`` (a top-level config key):

* ``"auto"`` (default): continue from the latest state file when there is one, else start a new run;
* ``True``: continue, and fail when there is no state file;
* ``False``: start a new run.

A new run refuses to start in a folder that holds another run's outputs (state files, ``model.pt``,
interval checkpoints, TensorBoard event files) unless ``--overwrite True``; with ``--overwrite True`` a new run
starts (the old state files are removed when it starts, so that a later ``auto`` cannot pick them).
:func:`check_run_folder` makes that decision in the config's ``initialize`` (before any data is read);
the handler re-reads the same decision when the trainer is built.

Divergence: when the loss of an iteration is NaN or infinite, the handler restores the objects from the last
good state file (if any), logs it and terminates the run, so that neither the state files nor the final
``model.pt`` hold diverged weights (the check of Ignite's ``TerminateOnNan``, plus the restore).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from tools.engines.checkpoint_io import load_checkpoint
from tools.engines.errors import InputFileError, InputValueError, OutputExistsError
from tools.engines.output_guard import refuse_overwrite

__all__ = ["STATE_PREFIX", "TrainingState", "check_resume", "check_run_folder", "resume_from", "state_files"]

logger = logging.getLogger(__name__)

STATE_PREFIX = "training_state"
RESUME_VALUES = ("auto", True, False)


def state_files(save_dir: str | Path, prefix: str = STATE_PREFIX) -> list[Path]:
    """State files ``<prefix>_checkpoint_<iteration>.pt`` in ``save_dir``, oldest (lowest iteration) first."""
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")
    found = []
    for f in Path(save_dir).glob(f"{prefix}_checkpoint_*.pt"):
        m = pattern.match(f.name)
        if m:
            found.append((int(m.group(1)), f))
    return [f for _, f in sorted(found)]


def check_resume(resume: Any) -> str | bool:
    """``resume`` as one of ``"auto"``, True, False (the CLI may pass the strings ``"True"``/``"False"``)."""
    if isinstance(resume, str) and resume.lower() in ("true", "false", "auto"):
        resume = {"true": True, "false": False, "auto": "auto"}[resume.lower()]
    if resume not in RESUME_VALUES or not isinstance(resume, (str, bool)):
        raise InputValueError(f"config key 'resume' must be 'auto', True or False, got {resume!r}")
    return resume


def resume_from(save_dir: str | Path, resume: Any = "auto", overwrite: bool = False,
                prefix: str = STATE_PREFIX) -> Path | None:
    """The state file to continue from, or None for a new run (see the module docstring).

    Raises:
        InputValueError: ``resume`` is not one of its values.
        InputFileError: ``resume`` is True and ``save_dir`` holds no state file.
    """
    resume = check_resume(resume)
    if resume is False or (resume == "auto" and overwrite):
        return None
    files = state_files(save_dir, prefix)
    if files:
        return files[-1]
    if resume is True:
        raise InputFileError(f"--resume True but ckpt_dir '{save_dir}' holds no '{prefix}_checkpoint_*.pt' file "
                             "to continue from; use --resume auto to start a new run")
    return None


def check_run_folder(save_dir: str | Path, outputs: Iterable[str | Path] = (), log_dirs: Iterable[str | Path] = (),
                     resume: Any = "auto", overwrite: bool = False, prefix: str = STATE_PREFIX,
                     planned_iterations: int | None = None) -> str | None:
    """Decide, before any work, between continuing a run and starting a new one; returns the state file to
    continue from (or None).

    A new run refuses when ``save_dir`` holds state files of ``prefix``, when one of ``outputs`` exists (entries
    may be glob patterns such as ``models/checkpoint_*.pt``) or when a folder of ``log_dirs`` holds TensorBoard
    event files, unless ``overwrite``. A state at or past ``planned_iterations`` (read from its file name) is a
    finished run: refused here, before the trainer (and its event files) are made.

    Raises:
        OutputExistsError (a FileExistsError): a new run would write into another run's folder, or the run
            to continue is finished.
    """
    state = resume_from(save_dir, resume, overwrite, prefix)
    if state is not None and planned_iterations:
        done = int(state.stem.rsplit("_", 1)[1])
        if done >= planned_iterations:
            raise OutputExistsError(_finished(save_dir, done, planned_iterations, state))
    if state is not None:
        logger.info("resuming training from '%s' (--resume auto; --overwrite True starts a new run)", state)
        return str(state)
    used: list[Path] = list(state_files(save_dir, prefix))
    for out in outputs:
        out = str(out)
        used += sorted(Path(out).parent.glob(Path(out).name)) if any(c in out for c in "*?[") else [Path(out)]
    for d in log_dirs:
        used += sorted(Path(d).glob("events.out.tfevents*"))
    refuse_overwrite(used, overwrite)
    return None


def _finished(save_dir: str | Path, done: int, planned: int, state: Path) -> str:
    return (f"training in '{save_dir}' already reached iteration {done} of {planned} (state '{state.name}'); raise "
            "--iterations/--epochs to continue it or pass --overwrite True to train again")


def _loss(output: Any) -> float | None:
    """The iteration's scalar loss from a MONAI trainer output (dict or decollated list), None when absent."""
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        output = output[0]  # decollated: the loss is replicated into every item
    if not isinstance(output, Mapping) or "loss" not in output:
        return None
    value = output["loss"]
    return float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TrainingState:
    """Ignite handler: periodic full-state checkpoints, resume at attach, stop-and-restore on a NaN loss.

    Args:
        save_dir: folder of the state files (the config's ``ckpt_dir``).
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (``None`` values, e.g. a disabled
            discriminator, are skipped). The trainer is added as ``"trainer"``, its grad scaler as ``"scaler"``.
        interval: iterations between state files.
        resume, overwrite: as in :func:`resume_from`.
        prefix: file name prefix; one per training stage sharing a folder.
        n_saved: state files of this process kept (older ones of this process are removed).
        terminate_on_nan: stop (restoring the last good state) when the loss is not finite.
    """

    def __init__(self, save_dir: str | Path, save_dict: Mapping[str, Any], interval: int = 1000,
                 resume: Any = "auto", overwrite: bool = False, prefix: str = STATE_PREFIX, n_saved: int = 2,
                 terminate_on_nan: bool = True) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise InputValueError(f"config key 'state_interval' must be a positive number of iterations, got {interval!r}")
        self.save_dir = Path(save_dir)
        self.objects = {k: v for k, v in save_dict.items() if v is not None}
        self.interval, self.prefix, self.n_saved = interval, prefix, n_saved
        self.resume, self.overwrite = check_resume(resume), overwrite
        self.terminate_on_nan = terminate_on_nan
        self.resumed_from: Path | None = None
        self.diverged = False

    def _to_save(self, engine: Engine) -> dict[str, Any]:
        objects = dict(self.objects, trainer=engine)
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects["scaler"] = scaler
        return objects

    def attach(self, engine: Engine) -> None:
        to_save = self._to_save(engine)
        self.resumed_from = resume_from(self.save_dir, self.resume, self.overwrite, self.prefix)
        if self.resumed_from is not None:
            self._load(engine, to_save, self.resumed_from)
        elif self.overwrite and _is_rank0():
            for old in state_files(self.save_dir, self.prefix):  # a new run replaces the old run's states
                old.unlink()
        self.checkpoint = Checkpoint(
            to_save, DiskSaver(str(self.save_dir), atomic=True, create_dir=True, require_empty=False),
            filename_prefix=self.prefix, n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.iteration,
        )
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_loss)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._save)
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _load(self, engine: Engine, to_save: dict[str, Any], path: Path) -> None:
        checkpoint = load_checkpoint(path)
        missing = sorted(set(to_save) - set(checkpoint))
        if missing:
            raise InputValueError(f"training state '{path}' lacks {missing} (found {sorted(checkpoint)}): it was "
                                  "written by another config; use another ckpt_dir or --overwrite True")
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        try:
            Checkpoint.load_objects(to_load=to_save, checkpoint=checkpoint)
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputValueError(f"training state '{path}' does not fit this config ({first.rstrip(':')}): it was "
                                  "written with other settings; use those, another ckpt_dir, or --overwrite True") from e
        engine.state.max_epochs = max_epochs  # the config's length wins (so --iterations can extend a run)
        if epoch_length is not None:
            engine.state.epoch_length = epoch_length
            engine.state.epoch = engine.state.iteration // epoch_length
        planned = (max_epochs or 0) * (engine.state.epoch_length or 0)
        if planned and engine.state.iteration >= planned:
            raise OutputExistsError(_finished(self.save_dir, engine.state.iteration, planned, path))
        logger.info("resumed from '%s' at iteration %d", path, engine.state.iteration)

    def _save(self, engine: Engine) -> None:
        if not self.diverged and _is_rank0():  # every rank resumes; rank 0 saves
            self.checkpoint(engine)

    def _check_loss(self, engine: Engine) -> None:
        loss = _loss(engine.state.output)
        if not self.terminate_on_nan or loss is None or math.isfinite(loss):
            return
        self.diverged = True
        files = state_files(self.save_dir, self.prefix)
        if files:
            objects = {k: v for k, v in self._to_save(engine).items() if k != "trainer"}
            Checkpoint.load_objects(to_load=objects, checkpoint=load_checkpoint(files[-1]))
            kept = f"restored the last good state '{files[-1]}'"
        else:
            kept = "no state file had been written yet"
        logger.error("loss is %s at iteration %d: training stopped; %s", loss, engine.state.iteration, kept)
        engine.terminate()

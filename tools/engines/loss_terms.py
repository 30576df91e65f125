"""Put a loss module's parts (``loss_function.last_terms``) into the trainer output, for any logging handler.

MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, target)`` and keeps only the total loss in
``engine.state.output``. A loss made of several terms (AortaDiff's image, mask and Kendall terms, the
hybrid loss's MSE and VLB, the joint VAE's L1/KL/Dice-CE) keeps the last value of each part as floats in
``self.last_terms``; this handler copies them into the output at ``IterationEvents.LOSS_COMPLETED``, before
MONAI decollates the output, so ``StatsHandler``, ``TensorBoardStatsHandler`` and ``MLFlowHandler`` read
them with :func:`scalar_logs` like the loss itself. A loss that also keeps them as detached one-element
tensors in ``self.last_term_tensors`` (AortaDiff's) has those copied instead: no host sync per iteration,
the logging handlers convert them at their ``log_interval``.
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

__all__ = ["LossTermsHandler", "scalar_logs"]


class LossTermsHandler:
    """On ``IterationEvents.LOSS_COMPLETED`` add ``loss_function.last_terms`` to ``engine.state.output``.

    Args:
        loss_function: the trainer's loss module; it must expose a ``last_terms`` dict of floats (or a
            ``last_term_tensors`` dict of one-element tensors, preferred when present).
    """

    def __init__(self, loss_function: Any) -> None:
        if not hasattr(loss_function, "last_terms"):
            raise ValueError(f"LossTermsHandler: {type(loss_function).__name__} has no 'last_terms' to log")
        self.loss_function = loss_function

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if isinstance(engine.state.output, dict):
            terms = getattr(self.loss_function, "last_term_tensors", None)
            engine.state.output.update(self.loss_function.last_terms if terms is None else terms)


def scalar_logs(output: Any) -> dict[str, float]:
    """``{name: float}`` of the loss and its terms in a trainer output (decollated list or dict).

    For the ``output_transform`` of ``StatsHandler`` / ``TensorBoardStatsHandler``: the loss and every scalar
    entry (tensors of one element, floats, ints).
    """
    if isinstance(output, list):  # decollated: every item carries the same scalars
        output = output[0]
    return {("loss" if k == CommonKeys.LOSS else k): float(v) for k, v in output.items() if _is_scalar(v)}


def _is_scalar(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return hasattr(value, "numel") and value.numel() == 1 and value.ndim <= 1 and value.dtype.is_floating_point

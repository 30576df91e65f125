"""Re-seed a random transform whenever an engine starts (fixed validation masks across epochs).

The SSL validation loss compares restorations of the *same* masked volumes every epoch only if the
masking transform restarts from the same random state; attach this to the evaluator and load the
validation data in the main process (``num_workers=0``).
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.transforms import Randomizable

__all__ = ["ReseedHandler"]


class ReseedHandler:
    """At ``Events.STARTED`` call ``transform.set_random_state(seed)``."""

    def __init__(self, transform: Randomizable, seed: int = 0) -> None:
        if not isinstance(transform, Randomizable):
            raise ValueError(f"ReseedHandler needs a Randomizable transform, got {type(transform).__name__}")
        self.transform = transform
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.transform.set_random_state(seed=self.seed)

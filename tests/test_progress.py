"""Training progress bar: attached on demand / on a terminal, shows the loss from MONAI's decollated output."""

from __future__ import annotations

from ignite.engine import Engine, Events

from tools.engines.progress import InteractiveProgressBar


def _engine():
    return Engine(lambda engine, batch: [{"loss": 0.5 * batch, "pred": None}])


def test_forced_bar_attaches_and_reads_loss(capsys):
    engine = _engine()
    handler = InteractiveProgressBar(enabled=True)
    handler.attach(engine)
    assert handler.bar is not None and engine.has_event_handler(handler.bar._close, Events.EPOCH_COMPLETED)
    assert handler._scalar([{"loss": 0.25, "pred": 1}]) == {"loss": 0.25}
    assert handler._scalar({"loss": 2}) == {"loss": 2.0}
    engine.run([1, 2, 3], max_epochs=1)
    assert "loss=1.5" in capsys.readouterr().err  # tqdm writes the postfix to stderr


def test_not_a_terminal_attaches_nothing():
    engine = _engine()
    handler = InteractiveProgressBar()  # pytest captures stdout: not a terminal
    handler.attach(engine)
    assert handler.bar is None
    assert not engine._event_handlers[Events.ITERATION_COMPLETED]
    InteractiveProgressBar(enabled=False).attach(engine)
    assert not engine._event_handlers[Events.ITERATION_COMPLETED]

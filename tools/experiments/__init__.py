"""Reruns of each paper's comparison on phantoms: ``python -m tools.experiments {aortadiff,abdomen,cardiac}``.

Each paper's experiment lives in its own package (``tools/<paper>/experiment.py``, a ``main(argv)``
function); this package only dispatches to it and holds what all of them share: the machine
description and the writer of ``docs/results.md`` sections.
"""

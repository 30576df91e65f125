"""`make demo`: the three bundles trained at their CPU size on CT phantoms, sampled and evaluated.

``python -m tools.demo [--bundles aortadiff_cect,...] [--output_dir runs/demo] [--jobs 2]``; see
:mod:`tools.demo.cli`. The stages are the bundles' own commands (:mod:`tools.demo.plan`), run by
:mod:`tools.demo.runner`; the closing table comes from :mod:`tools.demo.summary`, the overview picture
from :mod:`tools.demo.overview`.
"""

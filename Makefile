# Every target is self-sufficient on a fresh machine: it makes .venv if missing, installs the project, then works.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-label monailabel figures phantoms clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## demo: the three bundles trained on CT phantoms on the CPU, sampled and evaluated (5-10 minutes on 2 cores, by CPU);
##       one bundle: make demo BUNDLE=aortadiff_cect (or abdomen_semantic_synthesis, cardiac_ldm_ssl; a comma list)
demo: $(STAMP)
	$(PY) -m tools.demo $(if $(BUNDLE),--bundles $(BUNDLE))

## test: the whole pytest suite (CPU, tiny sizes)
test: $(STAMP)
	$(PY) -m pytest -q --durations=15

## test-label: a real MONAI Label server on 127.0.0.1 with the bundles (own environment .venv-label, made on first use)
test-label:
	bash scripts/test_label.sh

## monailabel: start MONAI Label on 127.0.0.1:$${PORT:-8000} with the bundles under model/ and phantom studies
monailabel:
	bash scripts/monailabel.sh

## figures: regenerate docs/ pictures: the phantom gallery, and training curves, AortaDiff plots and the overview of `make demo`'s run (runs/demo)
figures: $(STAMP)
	$(PY) -m tools.figures.phantoms_figure --out docs/phantoms.png
	$(PY) -m tools.figures.training_curves --logdirs "{'make demo, 64 px': 'runs/demo/aortadiff_cect'}" \
	  --tags "['loss_mse','loss_mask','s1','val_roi_psnr','val_lumen_thrombus_dice']" --out docs/aortadiff_training_curves.png
	cp runs/demo/aortadiff_cect/eval/bland_altman_diameters.png docs/aortadiff_bland_altman.png
	cp runs/demo/aortadiff_cect/eval/dice_boxplot.png docs/aortadiff_dice_boxplot.png
	cp runs/demo/overview.png docs/demo_overview.png

## phantoms: write 20 AAA phantom cases to ./cache/phantoms/aaa
phantoms: $(STAMP)
	$(PY) -m tools.data.phantoms --anatomy aaa --cases 20 --out cache/phantoms/aaa

clean:
	rm -rf $(VENV) .venv-label .pytest_cache cache runs eval

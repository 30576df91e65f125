#!/usr/bin/env bash
# Creates the MONAI Label environment (default <repository root>/.venv-label) once; sourced by test_label.sh and monailabel.sh.
#
# Why its own environment: monailabel 0.8.5 installs beside monai 1.6.1, but its dependencies numpymaxflow
# and pydicom-seg pin numpy<2 (numpy goes down to 1.26.4) and its app fails to import with pydicom 3.
# The core .venv stays on numpy 2.
#
# Size (measured with `du -sh .venv-label`, docs/monailabel.md): the first recipe (torch with triton,
# monai with all extras, full ITK) took 8.2 GB; this one takes less (figure in docs/monailabel.md):
# * ITK: only itk-core + itk-io (MONAI Label's writer uses itk.imwrite); the full `itk` is 1.5 GB.
# * monai extras limited to what the bundles and the server import (no mlflow/pandas/pyarrow, openslide,
#   lmdb, gdown); dicomweb-client without its [gcp] extra.
# * triton (0.9 GB, torch.compile's GPU kernel compiler) is removed after torch is installed: nothing here
#   compiles. The CUDA libraries stay: PyPI's torch loads them at import. (torch's CPU-only wheel would
#   save 3 GB more, but PyPI's torchvision, which LPIPS needs, does not load beside it.)
# sam2 (a monailabel dependency, built from source: minutes) is left out unless LABEL_WITH_SAM2=1:
# the bundle app only uses it for its optional SAM2 models, which we switch off (--conf sam2 false).
set -euo pipefail
# the repository root of this script (not the caller's folder): the environment is built there and the
# project installed from there, wherever the script is started from
LABEL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_LABEL=${VENV_LABEL:-$LABEL_ROOT/.venv-label}
PY=${PYTHON:-python3}
if ! "$VENV_LABEL/bin/python" -c "import monailabel, monai, tools" >/dev/null 2>&1; then
  echo "creating $VENV_LABEL (MONAI Label 0.8.5; several minutes, several GB: see docs/monailabel.md)" >&2
  start=$(date +%s)
  "$PY" -m venv "$VENV_LABEL"
  PIP="$VENV_LABEL/bin/pip"
  "$PIP" install -q 'torch==2.14.1' 'torchvision==0.29.1'
  # monailabel 0.8.5's own requirements (trimmed as above), pydicom capped below 3, without sam2
  "$PIP" install -q \
    'monai[fire,ignite,nibabel,pillow,psutil,skimage,tensorboard,tqdm]==1.6.1' 'itk-core==5.4.7' 'itk-io==5.4.7' \
    'lpips==0.1.4' 'pytorch-ignite>=0.5,<0.6' 'fire>=0.6' 'pytest>=8' \
    'uvicorn>=0.29.0' 'pydantic>=2.7.0' 'pydantic-settings>=2.2.1' 'python-dotenv>=1.0.1' 'fastapi>=0.110.2' \
    'python-multipart>=0.0.9' 'httpx>=0.27.0' 'schedule>=1.2.1' 'dicomweb-client>=0.59.1' 'timeloop>=1.0.2' \
    'expiringdict>=1.2.2' 'expiring_dict>=1.1.0' 'cachetools>=5.3.3' 'watchdog>=4.0.0' 'pydicom>=2.4.4,<3' \
    'pydicom-seg>=0.4.1' 'pynetdicom>=2.0.2' 'pynrrd>=1.0.0' 'numpymaxflow>=0.0.7' 'girder-client>=3.2.3' \
    'ninja>=1.11.1.1' 'einops>=0.7.0' 'pyyaml>=6.0.1' 'filelock>=3.11.0' 'passlib>=1.7.4' 'pyjwt>=2.8.0' \
    'bcrypt>=4.1.2' 'shapely>=2.0.4' 'requests>=2.31.0' 'requests-toolbelt>=1.0.0' 'urllib3>=2.2.1' \
    scikit-learn scipy 'google-auth>=2.29.0'
  if [ "${LABEL_WITH_SAM2:-0}" = "1" ]; then
    "$PIP" install -q 'monailabel==0.8.5' 'pydicom>=2.4.4,<3'
  else
    "$PIP" install -q --no-deps 'monailabel==0.8.5'
  fi
  # the project itself: --no-deps because pyproject asks numpy>=2 (the label environment has 1.26)
  "$PIP" install -q --no-deps -e "$LABEL_ROOT"
  # last, so that no later install brings it back
  "$PIP" uninstall -q -y triton
  # pip's download cache is not part of the environment; byte-code caches are rebuilt on use
  echo "$VENV_LABEL ready in $(( $(date +%s) - start )) s, $(du -sh "$VENV_LABEL" | cut -f1) on disk" >&2
fi

#!/usr/bin/env bash
# make test-label: a real MONAI Label server on 127.0.0.1 with tiny bundle weights on phantom studies
# (tests_label/, not part of the main suite). Creates .venv-label on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/label_env.sh
exec "$VENV_LABEL/bin/python" -m pytest tests_label -q -p no:cacheprovider "$@"

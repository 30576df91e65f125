#!/usr/bin/env bash
# make monailabel: app folder (MONAI Label's monaibundle app + the bundles under model/) and phantom
# studies in runs/monailabel/, then `monailabel start_server` on 127.0.0.1:${PORT:-8000}.
# WEIGHTS=bundle serves the trained weights (bundles/<name>/models/model.pt) instead of tiny random ones.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/label_env.sh
exec "$VENV_LABEL/bin/python" -m tools.monailabel_app.make_app run \
  --app runs/monailabel/app --studies runs/monailabel/studies \
  --weights "${WEIGHTS:-tiny}" --port "${PORT:-8000}" --host "${HOST:-127.0.0.1}" "$@"

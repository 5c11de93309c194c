#!/usr/bin/env bash
# Set-up (if needed) then the main job on the embedded default. Extra arguments go to `trl-mtp demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/trl-mtp demo "$@"

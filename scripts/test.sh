#!/usr/bin/env bash
# Set-up (if needed) then the whole test suite. Extra arguments go to pytest, e.g. `-m "not slow"`.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# -rs: every skip says why. 2 xdist workers (the machine's 2 cores); loadgroup keeps the 2-process tests (marked
# xdist_group, tests/two_process.py) on one worker, one after another, while the other runs the rest. `-n 0` after
# this script's name runs in one process.
.venv/bin/python -m pytest -q -rs -n 2 --dist loadgroup "$@"
rc=$?
# pytest exits 5 when no test was collected: a suite that ran nothing is a failure here, said plainly.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"

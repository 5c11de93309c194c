#!/usr/bin/env bash
# Creates .venv and installs the tested stack. torch goes first: a plain `torch` requirement with no torch
# installed would pull a multi-GB CUDA build. Re-running is cheap: a stamp skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.trl-mtp-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,deepspeed,tracking]'
  echo "$want" > "$stamp"
fi
# The report test renders the HTML pages in headless chromium: install it where this script can (root, apt-get);
# elsewhere that test is skipped and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium (for the report test)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    >/dev/null || echo "setup: chromium could not be installed; the report's rendering test will be skipped" >&2
fi

#!/usr/bin/env bash
# Installs everything the project needs into ./.venv (or into the active virtual environment).
# torch 2.13.0 goes first: installed later, as a dependency, pip would pick the newest build
# with gigabytes of CUDA packages. Sourced by run_grpo.sh and tests/run.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x "$root/.venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$root/.venv"
  # shellcheck disable=SC1091
  . "$root/.venv/bin/activate"
fi
stamp="$VIRTUAL_ENV/.etegrl-installed"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "${ETEGRL_REINSTALL:-0}" = 1 ]; then
  echo "installing into $VIRTUAL_ENV (torch 2.13.0 first) ..."
  python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  python -m pip install -q --disable-pip-version-check -e "$root[text,test,plot]"
  # Only for the MovieLens-100K files it ships; recbole's own dependencies are not needed.
  python -m pip install -q --disable-pip-version-check --no-deps "recbole==1.2.1"
  touch "$stamp"
fi

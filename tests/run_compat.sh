#!/usr/bin/env bash
# Run the compatibility tests (tests/test_compat.py, tests/test_hooked.py: load_hooked and
# batched HookedTransformer generation, and the HookedTransformer case of the ITI baseline) with the interpreter of VENV, on the alignez_tl of this checkout. Used by
# `make test-compat`.
set -euo pipefail
venv="$1"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
versions=$("$venv/bin/python" -c 'from importlib.metadata import version as v; print("transformer-lens", v("transformer-lens"), "/ transformers", v("transformers"))')
echo "[compat] tests/test_compat.py tests/test_hooked.py with $versions"
PYTHONPATH="$(pwd)" exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_compat.py \
    tests/test_hooked.py tests/test_iti.py::test_iti_on_hooked_transformer

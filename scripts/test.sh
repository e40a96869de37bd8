#!/usr/bin/env bash
# Set everything up and run every test: Python tests (incl. Triton kernels in the interpreter),
# C++ unit tests through CMake/ctest, and ruff.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m pytest python_tests -q -p no:cacheprovider -m "slow or not slow"  # the default leaves out slow tests
cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build build/cmake -j 2 > /dev/null
ctest --test-dir build/cmake --output-on-failure
ruff check .

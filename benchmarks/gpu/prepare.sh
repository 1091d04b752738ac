#!/usr/bin/env bash
# Here, where PyPI is reachable: download the wheels in wheels.txt for the GPU machine's Python into
# benchmarks/gpu/wheels/ (git-ignored), which a device run names in `carry`. --no-deps: the image
# already holds their dependencies; list any it lacks in wheels.txt too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# The image's python3 is 3.12 (/work/.library/device/KINDS.md); set GPU_PYTHON_VERSION if it changes.
PYV=${GPU_PYTHON_VERSION:-3.12}
PYTHON=${PYTHON:-python3}
mkdir -p wheels
grep -v '^\s*#' wheels.txt | grep -v '^\s*$' | while read -r req; do
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d wheels "$req"
done
ls -l wheels

#!/usr/bin/env bash
# Run here, before a device check: stages what the GPU machine lacks into .device-deps/ (git-ignored), which the
# device tool then carries: the Debian headers and CMake packages (../shared/device/stage-deps.sh), zlib's headers
# (the machine has libz but no zlib1g-dev) and the PyTorch baseline script.
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/device/stage-deps.sh .device-deps
cp /usr/include/zlib.h /usr/include/zconf.h .device-deps/include/
cp ../shared/bench/torch_baseline.py .device-deps/
du -sh .device-deps

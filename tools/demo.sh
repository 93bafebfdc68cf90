#!/usr/bin/env bash
# camrt's main job on the shipped model: installs missing Debian packages, builds, then `camrt demo` explains a
# dozen Fashion-canvas test images with the trained default model (weights/models/fashion-canvas) and seven CAM
# methods, writing a contact sheet (BUILD_DIR/demo/contact_sheet.png) and results.json.
# Usage: tools/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
tools/deps.sh
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then export PATH=/usr/local/cuda/bin:$PATH; fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target camrt_cli
"$build/camrt" demo --out "$build/demo"

#!/usr/bin/env bash
# camrt's main job on a shipped model: installs missing Debian packages, builds, converts the bundled
# ResNet-18-style fixture (tests/fixtures/models/resnet18, made by tools/golden/make_golden.py; random
# weights until a trained default model ships), shows its plan, predicts, and explains a photo. Usage: tools/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
tools/deps.sh
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then export PATH=/usr/local/cuda/bin:$PATH; fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target camrt_cli
model=tests/fixtures/models/resnet18
out=$build/demo/resnet18
"$build/camrt" convert "$model/model.onnx" -o "$out"
"$build/camrt" inspect "$out/model.json" --summary
"$build/camrt" predict "$out/model.json" --input "$model/input.npy" --topk 3 --save-logits "$build/demo/logits.npy"
echo "logits written to $build/demo/logits.npy"
# Explain a real photo (skimage's chelsea cat, tests/fixtures/image) with three CAM methods.
"$build/camrt" explain "$out/model.json" tests/fixtures/image/chelsea.jpg --method gradcam,scorecam,eigencam \
  --out "$build/demo/maps"
echo "heatmaps and maps written to $build/demo/maps"

#!/usr/bin/env bash
# The GPU check, run on the lent GPU machine from the repository root with .device-deps carried (see
# tools/device_prepare.sh): builds Release for the card, runs the `gpu` tests, exports seeded torchvision
# resnet50 / vgg16 / mobilenet_v2, converts them, runs `camrt bench` and the PyTorch baselines side by side.
# Everything lands under $OUT (default /tmp/camrt-device): build.log (tail), gpu_tests.log, camrt_bench.jsonl,
# torch_baseline.jsonl, summary.txt (every row, then issue 4's targets as ratios: tools/device_summary.py).
# Sized for under 8 minutes on an H100/H200 with 16 cores: no A/B bench starts later than CAMRT_CHECK_SECONDS
# (default 420) after the script's start, and each bench call stops after 2 minutes; the target rows and the
# PyTorch baselines run before the A/B rows, whatever the clock says.
# Usage: tools/device_check.sh [--quick]   (--quick: tests and ResNet-50 only)
set -uo pipefail
script_start=$(date +%s)
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/camrt-device}
mkdir -p "$out"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
deps=$PWD/.device-deps
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/summary.txt"; }

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
arch=${arch:-90}
zlib=$(ls /usr/lib/x86_64-linux-gnu/libz.so /usr/lib/x86_64-linux-gnu/libz.so.1 /lib/x86_64-linux-gnu/libz.so.1 2>/dev/null | head -1)
log "host: $(nproc) cores; GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null), sm_$arch, zlib $zlib"

log "configure + build"
if ! { cmake -S . -B build-device -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$deps" \
         -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCAMRT_NATIVE=ON \
         -DZLIB_INCLUDE_DIR="$deps/include" -DZLIB_LIBRARY="$zlib" &&
       cmake --build build-device -j"$(nproc)"; } >"$out/build_full.log" 2>&1; then
  tail -80 "$out/build_full.log" >"$out/build.log"
  log "BUILD FAILED (see build.log)"
  exit 1
fi
tail -5 "$out/build_full.log" >"$out/build.log"
rm -f "$out/build_full.log"
camrt=build-device/camrt

log "gpu tests"
(cd build-device && timeout 300 ctest -L gpu --output-on-failure --timeout 150 -j4) >"$out/gpu_tests.log" 2>&1
log "gpu tests rc=$?"
# ctest hides a passing test's output: doctest's own summary shows how many assertions really ran (a skipped
# GPU test case asserts nothing and prints SKIPPED).
timeout 200 build-device/tests/camrt_tests --source-file='*test_gpu_*' >"$out/gpu_doctest.log" 2>&1
log "gpu doctest: $(grep -c SKIPPED "$out/gpu_doctest.log") SKIPPED; $(grep 'assertions:' "$out/gpu_doctest.log")"
# Whether cuDNN took the one-call conv + bias + ReLU for NHWC data (half data may want a half bias).
grep -h "fused by cuDNN" "$out/gpu_doctest.log" | sort | uniq -c | tee -a "$out/summary.txt"
rm -f "$out/gpu_doctest.log"
# The golden models and CAMs of the CPU suite, explained on the GPU (test_gpu_models), are part of the gpu label.

models="resnet50,vgg16,mobilenet_v2"
[ $quick = 1 ] && models="resnet50"
log "export + convert: $models"
python3 "$deps/torch_baseline.py" --device cpu --models "$models" --batches 1 --iters 1 --export-onnx /tmp/camrt-onnx \
  --skip-scorecam >/dev/null 2>"$out/export.err" || log "export failed: $(tail -3 "$out/export.err")"
for m in ${models//,/ }; do
  "$camrt" convert /tmp/camrt-onnx/$m.onnx -o /tmp/camrt-models/$m >/dev/null 2>>"$out/export.err" || log "convert $m failed"
done

# Benches in order of what they decide: first the rows of issue 4's targets for every model, then PyTorch's
# baselines, then the A/B rows (what fusion, fp32, float NHWC, the algorithm policy and batching buy) while time is
# left. Each bench call has a time limit, so one hang costs its own rows only.
budget=${CAMRT_CHECK_SECONDS:-420}   # seconds from the script's start until the A/B rows stop being started
time_left() { [ $(( $(date +%s) - script_start )) -lt "$budget" ]; }
bench() { timeout 120 "$camrt" bench "/tmp/camrt-models/$1/model.json" --device cuda "${@:2}" >>"$out/camrt_bench.jsonl" 2>>"$out/bench.err" \
            || log "bench $* failed (rc $?): $(tail -2 "$out/bench.err")"; }

log "camrt bench: target rows"
for m in ${models//,/ }; do
  bench $m --batch 1,32 --method forward,gradcam,eigencam --precision tf32 --iters 30
  # fp16: the forward-only part of each plan on NHWC half (channels_last_nodes in the JSON says how many nodes).
  bench $m --batch 1,32 --method gradcam,forward --precision fp16 --iters 30
  bench $m --batch 1 --method scorecam --precision tf32 --iters 3 --warmup 1
done

log "torch baselines"
timeout 300 python3 "$deps/torch_baseline.py" --device cuda --models "$models" --batches 1,32 --iters 30 \
  >"$out/torch_baseline.jsonl" 2>>"$out/bench.err" || log "torch baseline failed: $(tail -3 "$out/bench.err")"

log "camrt bench: A/B rows (until ${budget} s after the start)"
for m in ${models//,/ }; do
  time_left && bench $m --batch 1,32 --method forward,gradcam --precision tf32 --iters 30 --fusion off  # what fusion buys
  time_left && bench $m --batch 1,32 --method gradcam,forward --precision tf32 --channels-last float --iters 30
  time_left && bench $m --batch 32 --method forward --precision tf32 --algo-slack 0 --iters 30  # always the fastest algorithm
  time_left && bench $m --batch 1 --method scorecam --precision fp16 --iters 3 --warmup 1
  time_left && bench $m --batch 1 --method scorecam --precision tf32 --channels-last float --iters 3 --warmup 1
done
for m in ${models//,/ }; do
  time_left && bench $m --batch 1,32 --method forward,gradcam --precision fp32 --iters 30
  # Batched variants: five targets in one backward (compare with the top-1 rows), aug-smooth's six variants in one
  # pass (automatic) against one at a time (--chunk 1).
  time_left && bench $m --batch 1 --method gradcam,guided-backprop --target top5 --precision tf32 --iters 30
  time_left && bench $m --batch 1 --method gradcam --aug-smooth --precision tf32 --iters 30
  time_left && bench $m --batch 1 --method gradcam --aug-smooth --chunk 1 --precision tf32 --iters 30
done
time_left || log "A/B rows cut at the ${budget} s budget"

log "summary"
python3 tools/device_summary.py "$out" | tee -a "$out/summary.txt"
log "done"

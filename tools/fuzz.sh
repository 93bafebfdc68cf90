#!/usr/bin/env bash
# Fuzzes every parser camrt reads untrusted files with (tests/fuzz/fuzz_*.cpp) for SECONDS each, under libFuzzer
# with AddressSanitizer and UndefinedBehaviorSanitizer, starting from the committed seeds in tests/fuzz/corpus.
# Fails if any target finds a crash, a leak, a timeout (an input taking over 1 s) or runs out of memory (2 GiB);
# the reproducer is left in build-fuzz/artifacts/<target>/ (turn it into a regression test in
# tests/test_hostile_inputs.cpp). New inputs found go to build-fuzz/corpus/<target>/, never into the repository.
# Usage: tools/fuzz.sh [SECONDS=60] [TARGET...]   (targets: onnx safetensors graph_json npy image)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
build=${CAMRT_FUZZ_BUILD:-build-fuzz}
command -v clang++-14 >/dev/null || { echo "fuzz.sh: clang++-14 not found: apt-get install clang-14 libclang-rt-14-dev" >&2; exit 1; }
CC=clang-14 CXX=clang++-14 cmake -S . -B "$build" -DCAMRT_FUZZ=ON -DCAMRT_WITH_CUDA=OFF -DCAMRT_BUILD_TESTS=OFF \
  -DCAMRT_NATIVE=OFF -DCAMRT_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); targets+=("${n#fuzz_}"); done
fi
cmake --build "$build" -j"$(nproc)" --target $(printf 'fuzz_%s ' "${targets[@]}")
status=0
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t"
  seeds=tests/fuzz/corpus/$t
  echo "== fuzz_$t: $seconds s (seeds: $(ls "$seeds" 2>/dev/null | wc -l))"
  if ! ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
       "$build/fuzz_$t" -max_total_time="$seconds" -timeout=1 -rss_limit_mb=2048 -max_len=1048576 \
       -print_final_stats=1 -artifact_prefix="$build/artifacts/$t/" "$build/corpus/$t" "$seeds" \
       >"$build/fuzz_$t.log" 2>&1; then
    echo "fuzz_$t FAILED: $(grep -m1 -E 'ERROR|SUMMARY|timeout|out-of-memory' "$build/fuzz_$t.log" || tail -1 "$build/fuzz_$t.log")"
    ls "$build/artifacts/$t/"
    status=1
  else
    echo "fuzz_$t: no findings ($(grep -m1 'stat::number_of_executed_units' "$build/fuzz_$t.log" | awk '{print $2}') inputs)"
  fi
done
exit $status

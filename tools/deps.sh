#!/usr/bin/env bash
# Installs the Debian packages camrt builds and tests against, if any is missing (Debian 12).
# The CUDA toolkit is optional and not installed here: with nvcc present the CUDA backend is built too.
set -euo pipefail
packages=(build-essential cmake nlohmann-json3-dev doctest-dev libstb-dev zlib1g-dev libonnx-testdata dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# The wheels bench/gpu.sh installs on a bare GPU machine (no network; Python 3.12 with PyTorch,
# torchvision, Accelerate, TensorBoard, scikit-learn and Pillow already there): exactly what artclf
# imports beyond those, at the versions of constraints.txt, for CPython 3.12 on manylinux x86-64.
# Run here, where PyPI is reachable; the folder is git-ignored and travels with the checkout
# (the device tool's `carry`).
# Usage: bash bench/device_wheels.sh [DIR]     (default bench/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-bench/wheels}
pip=${PIP:-.venv/bin/pip}

# artclf's imports that such a machine lacks, and what they need in turn:
#   webdataset (shards) <- braceexpand; boto3 (storage) <- botocore, s3transfer, jmespath,
#   python-dateutil, six, urllib3; matplotlib (plots) <- contourpy, cycler, fonttools, kiwisolver,
#   pyparsing (and numpy, packaging, Pillow, python-dateutil: there already or listed).
packages=(webdataset braceexpand boto3 botocore s3transfer jmespath python-dateutil six urllib3
    matplotlib contourpy cycler fonttools kiwisolver pyparsing)

pins=()
for p in "${packages[@]}"; do
    pin=$(grep -i "^${p}==" constraints.txt) || { echo "device_wheels: $p is not in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
"$pip" download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$dest.tmp" "${pins[@]}"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
printf '%s\n' "${pins[@]}" > "$dest/requirements.txt"
echo "device_wheels: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"

#!/usr/bin/env bash
# Download here (PyPI) the trimmed vLLM 0.26.0 wheel set that runs on the lent GPU's Python 3.12 /
# torch 2.11.0 image (list: vllm-0.26.0-wheels.txt, 110 wheels, ~452 MiB), pack.sh installs
# them for Python 3.12 and packs them with the rest of a lease's carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
LIST=scripts/device/vllm-0.26.0-wheels.txt
W=.whl/vllm
mkdir -p "$W"
specs=$(grep -v '^#' "$LIST" | sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/')
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_5_x86_64 any; do
  plat+=(--platform "$p")
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$W" $specs
# pip may take another platform build of the same release (cryptography's manylinux_2_28 for the
# list's 2_34, by the order of --platform above): compare name and version, not the whole file name.
missing=0
while read -r f; do
  nv=$(echo "$f" | cut -d- -f1-2)
  compgen -G "$W/$nv-*.whl" > /dev/null || { echo "missing: $nv ($f)"; missing=1; }
done < <(grep -v '^#' "$LIST")
[ "$missing" = 0 ] || echo "some wheels of the list were not downloaded: check $W" >&2
du -sh "$W"

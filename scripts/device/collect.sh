#!/usr/bin/env bash
# Unpack what scripts/device/ship.py sent back (the folders named in files_at) into runs/:
#   bash scripts/device/collect.sh /work/.device/41 /work/.device/42 ...
set -euo pipefail
mkdir -p runs
for d in "$@"; do
  for f in "$d"/*.tgz; do [ -e "$f" ] && tar -C runs -xzf "$f" && echo "unpacked $f"; done
  for first in "$d"/*.tgz.part00; do
    [ -e "$first" ] || continue
    cat "${first%.part00}".part* | tar -C runs -xzf - && echo "unpacked ${first%.part00}"
  done
done

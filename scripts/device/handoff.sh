#!/usr/bin/env bash
# Hand a study's run folder from one session to the next through main's history. A session's
# ignored files (runs/, .carry/) do not reach the next session's checkout, and a plan of several
# leases (experiments/study-spider-v2.yaml: 5-6) needs each lease's finished stages in the next.
# So the stages shipped home are packed (study.sh pack: outputs, manifests, logs; adapters in bf16;
# no checkpoints, no SFT dataset already trained on), committed in one commit and removed from the tree in the next:
# the tree stays small enough for a device call (64 MiB with a part), and the commit restores them.
#   PART_MB=58 bash scripts/device/handoff.sh save RUN_DIR [STAGE ...]
#                                                            # two commits; appends the restore
#                                                            # line to results/<plan>/HANDOFF.md
#   bash scripts/device/handoff.sh restore COMMIT [DEST]      # parts into DEST (default .carry/run)
#                                                            # and the run into runs/
# On the device, per part (one call each, after setup.sh's parts): carry .carry/run/run.tgz.NN and
#   mkdir -p /root/matsql/handoff && cp .carry/run/run.tgz.NN /root/matsql/handoff/
# then, before study.sh start: bash scripts/device/study.sh unpack /root/matsql/handoff
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  save)
    run=${2:?usage: handoff.sh save RUN_DIR [STAGE ...]}
    run=${run%/}
    shift 2
    name=$(basename "$run") dir=handoff/$(basename "$run")
    [ -d "$run/manifests" ] || { echo "handoff: $run has no manifests/ (not a run folder)" >&2; exit 1; }
    [ ! -e "$dir" ] || { echo "handoff: $dir exists; commit or remove it first" >&2; exit 1; }
    bash scripts/device/study.sh pack "$run" "$dir" "$@" > /dev/null
    if [ $# -gt 0 ]; then  # named stages (the final adapters of a study, say): say which
      what="$# named stage(s): $*"
    else
      what="$(python3 -c 'import json, pathlib, sys
print(sum(json.loads(m.read_text()).get("status") == "done" for m in pathlib.Path(sys.argv[1]).glob("*.json")))' "$run/manifests") finished stage(s)"
    fi
    git add -- "$dir"
    git commit -q -m "handoff: $name, $what" -- "$dir"
    c=$(git rev-parse HEAD)
    log=results/$name/HANDOFF.md
    mkdir -p "$(dirname "$log")"
    [ -f "$log" ] || printf '# Run folders handed between sessions (scripts/device/handoff.sh)\n\n' > "$log"
    printf -- '- %s: %s, %s MiB: `bash scripts/device/handoff.sh restore %s`\n' \
      "$(date -u +%Y-%m-%dT%H:%MZ)" "$what" "$(du -sm "$dir" | cut -f1)" "$c" >> "$log"
    git rm -rq -- "$dir"
    git add -- "$log"
    git commit -q -m "handoff: $name removed from the tree (restore: bash scripts/device/handoff.sh restore ${c:0:12})" -- "$dir" "$log"
    echo "saved in $c; restore: bash scripts/device/handoff.sh restore $c"
    ;;
  restore)
    c=${2:?usage: handoff.sh restore COMMIT [DEST]}
    dest=${3:-.carry/run}
    dir=$(git show --name-only --format= "$c" | sed -n 's#^\(handoff/[^/]*\)/.*#\1#p' | sort -u)
    [ "$(echo "$dir" | grep -c .)" = 1 ] || { echo "handoff: commit $c holds no single handoff/<plan> folder" >&2; exit 1; }
    parts=$(git ls-tree --name-only "$c" "$dir/" | grep '/run\.tgz\.[0-9]*$' || true)
    [ -n "$parts" ] || { echo "handoff: commit $c has no $dir/run.tgz.* parts (the commit that removed them? its parent holds them)" >&2; exit 1; }
    rm -rf "$dest" && mkdir -p "$dest" runs
    for p in $parts; do git show "$c:$p" > "$dest/$(basename "$p")"; done
    cat "$dest"/run.tgz.* | tar -C runs -xzf -
    echo "parts in $dest: $(ls "$dest" | tr '\n' ' ')"
    echo "unpacked into runs/$(basename "$dir")"
    ;;
  *) echo "usage: handoff.sh save RUN_DIR [STAGE ...] | restore COMMIT [DEST]" >&2; exit 2 ;;
esac

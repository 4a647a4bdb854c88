"""Rewrite machine-absolute paths in committed results to repo-relative ones (issue 20).

    python scripts/portable_results.py [results] [--check] [--tracked]

Text files only. Gzipped rollouts and images are left alone: a rollout's bytes are evidence that
other results point to (labels record its sha256; its header's config must hash to its
config_hash), so the paths its header and records name stay as the run wrote them. The runs
behind the committed results were made in a checkout at /root/matsql/repo (device machines) with scratch folders under
/root/matsql/, /root/ and /tmp/; their paths become relative to the repo ("runs/study-spider/...")
or start at the scratch folder's name ("demo-run4/...", "site/trl/..."). New reports, compares
and collected runs are written portable by matsql itself (matsql.evaluate.portable).
--check lists the files that still hold such paths and exits 1 if any do; --tracked looks only
at files git tracks (what is committed, not a run still being written).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# Longest prefix first; each maps a machine's folder to what a reader of the results can follow.
REWRITES = (
    ("/root/matsql/repo/", ""),
    ("/root/matsql/repo", "."),
    ("/root/matsql/", ""),
    ("/root/", ""),
    ("/tmp/", ""),
)
ABSOLUTE = re.compile(r"/root/|/tmp/")
BINARY_SUFFIXES = {".gz", ".png", ".pdf", ".safetensors", ".bin", ".arrow"}


def rewrite(text: str) -> str:
    for old, new in REWRITES:
        text = text.replace(old, new)
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    tracked = "--tracked" in argv
    roots = [Path(a) for a in argv if not a.startswith("--")] or [Path("results")]
    hits = []
    for root in roots:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in BINARY_SUFFIXES)
        if tracked:
            listed = subprocess.run(
                ["git", "ls-files", "-z", "--", "."], cwd=root, capture_output=True, text=True, check=True
            ).stdout
            keep = {(root / f).resolve() for f in listed.split("\0") if f}
            files = [p for p in files if p.resolve() in keep]
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if not ABSOLUTE.search(text):
                continue
            hits.append(path)
            if not check:
                path.write_text(rewrite(text), encoding="utf-8")
    for p in hits:
        print(("holds absolute paths: " if check else "rewrote ") + str(p))
    return 1 if (check and hits) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# Source on a lent GPU machine (device tool) from the repository root: carried wheels on the
# path, matsql from the working tree, data and caches outside the tree (they survive between
# calls while the machine stays warm).
export MATSQL_STATE=${MATSQL_STATE:-/root/matsql}
export PYTHONPATH=$MATSQL_STATE/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export MATSQL_DATA=$MATSQL_STATE/data MATSQL_CACHE=$MATSQL_STATE/cache PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
matsql() { python3 -m matsql.cli "$@"; }

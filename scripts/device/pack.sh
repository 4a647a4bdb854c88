#!/usr/bin/env bash
# Build the git-ignored .carry/ folder that device calls carry: wheels the GPU image lacks,
# the Spider data the study reads, and the Qwen GGUF in 54 MiB parts (9 calls; a part plus the working tree must stay under 64 MiB).
set -euo pipefail
DATA=${MATSQL_DATA:-../shared/data}
mkdir -p .carry/whl .carry/data/spider .carry/data/spider-syn .carry/model
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .carry/whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess sqlglot==30.30.0 gguf==0.19.0 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated_types typing_inspection
cp -r "$DATA"/spider/{dev.json,tables.json,dev_gold.sql,train_gold.sql,database} .carry/data/spider/
cp "$DATA"/spider-syn/train_spider.json .carry/data/spider-syn/
GGUF=$(python3 -c 'from matsql.models import resolve_model; print(resolve_model("qwen2.5-coder-0.5b-instruct").path)')
(cd .carry/model && split -b 54m -d "$GGUF" part)
du -sh .carry/*

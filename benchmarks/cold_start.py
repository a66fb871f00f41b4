"""Cold start: a fresh process, model already converted, to its first answer on the demo warehouse.

    python benchmarks/cold_start.py [--runs 3] [--question "How many customers are there?"] [--cli]

Each run is a new Python process that asks one question through nl2sql's own path (Pipeline.ask, what
`nl2sql ask` and nl2sql.ask call) with timers hooked around the stages, so the breakdown is of the real path:

  interpreter    python itself, until the driver's first line
  imports        every module imported along the way (wherever the import happens; self time)
  weights        reading the checkpoint (from_pretrained, or the merged-checkpoint cache)
  adapter        applying and merging the LoRA adapter (0 when the merged checkpoint is cached)
  tokenizer      the Hugging Face tokenizer
  llg tokenizer  llguidance's view of the vocabulary (outlines' LLGuidanceBackend)
  grammar        compiling the schema's SQL grammar
  schema prefill the KV cache of the schema part of the prompt
  warehouse      opening the demo warehouse, introspection, value and linking indexes
  generator setup  SqlGenerator(): outlines' wrapper of the model, the SQL vocabulary
  decode         the question's prefill and the candidates' decoding (the rest of `generate`)
  check + run    validating the candidates' SQL and running it on the warehouse
  other          everything else (settings, cache keys, prompt, query log)
  exit           after the answer: interpreter teardown (not part of the time to the answer)

Wall seconds and the main thread's CPU seconds are both shown. On a shared machine wall time is mostly waiting
for other jobs; the main thread's CPU time is the critical path and stays steady, so with NL2SQL_THREADS=1 its
total is about what the wall time is on an idle machine (torch's own worker threads are not counted in it; the
background thread that builds llguidance's tokenizer is reported apart). Peak memory is the child's maximum
resident set. `--cli` also times `nl2sql ask` itself. Timed assertions live nowhere in the tests; this prints.

    NL2SQL_THREADS=1 python benchmarks/cold_start.py --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["interpreter", "imports", "weights", "adapter", "tokenizer", "llg tokenizer", "generator setup", "grammar",
          "schema prefill", "warehouse", "decode", "check + run", "other"]

# The child: hooks a self-time stopwatch around each stage, asks once, prints the figures as JSON.
CHILD = r'''
import time, sys, os, json, threading
T0 = time.perf_counter(); C0 = time.process_time()
import importlib._bootstrap as _bs

wall = {}; cpu = {}; stack = []

def _enter(label):
    stack.append([label, time.perf_counter(), time.thread_time(), 0.0, 0.0])

def _leave():
    label, w0, c0, cw, cc = stack.pop()
    dw, dc = time.perf_counter() - w0, time.thread_time() - c0
    wall[label] = wall.get(label, 0.0) + dw - cw; cpu[label] = cpu.get(label, 0.0) + dc - cc
    if stack:  # the parent's self time excludes this stage
        stack[-1][3] += dw; stack[-1][4] += dc

MAIN = threading.main_thread()

def timed(label, fn):
    def wrapper(*a, **k):
        if threading.current_thread() is not MAIN:  # background work overlaps the main path: not a stage of it
            return fn(*a, **k)
        _enter(label)
        try:
            return fn(*a, **k)
        finally:
            _leave()
    wrapper.__wrapped__ = fn
    return wrapper

# every import not yet in sys.modules goes through _find_and_load (looked up on the module at each import)
_orig_find_and_load = _bs._find_and_load
_bs._find_and_load = timed("imports", _orig_find_and_load)

def hook(obj, name, label, prop=False):
    if prop:
        p = getattr(obj, name)
        setattr(obj, name, property(timed(label, p.fget)))
    else:
        setattr(obj, name, timed(label, getattr(obj, name)))

if os.environ.get("COLDSTART_EAGER_BITMASK"):
    # --eager-bitmask: stand in for llguidance.torch, whose import wraps a kernel in torch.compile (importing
    # inductor) and whose first call compiles it; measures what generating without it would save
    import types
    _m = types.ModuleType("llguidance.torch")
    def _alloc(batch, vocab):
        import torch
        return torch.full((batch, (vocab + 31) // 32), -1, dtype=torch.int32)
    def _fill(interp, bitmask, index=0):
        v = bitmask[index, :]
        interp.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())
    def _apply(logits, mask):
        import torch
        logits = logits.unsqueeze(0) if logits.dim() == 1 else logits
        mask = mask.unsqueeze(0) if mask.dim() == 1 else mask
        cutoff = 32 * mask.shape[1]
        if logits.shape[1] > cutoff:
            logits[:, cutoff:] = float("-inf")
            logits = logits[:, :cutoff]
        bits = (mask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
        logits.masked_fill_(bits.reshape(mask.shape[0], -1)[:, :logits.shape[1]] == 0, float("-inf"))
    _m.allocate_token_bitmask, _m.fill_next_token_bitmask, _m.apply_token_bitmask_inplace = _alloc, _fill, _apply
    import llguidance
    sys.modules["llguidance.torch"] = _m
    llguidance.torch = _m

import nl2sql.api as api
import nl2sql.model as model
import nl2sql.generate as generate
# weights, tokenizer, adapter: the loaders model.load calls (whichever it uses)
for name, label in [("_load_weights", "weights"), ("_load_tokenizer", "tokenizer"), ("_apply_adapter", "adapter"),
                    ("llg_tokenizer", "llg tokenizer")]:
    if hasattr(model, name):
        hook(model, name, label)
if not hasattr(model, "_load_weights"):  # the loader before the cold-start work: hook transformers itself
    import transformers
    hook(transformers.AutoModelForCausalLM, "from_pretrained", "weights")
    hook(transformers.AutoTokenizer, "from_pretrained", "tokenizer")
    import peft
    hook(peft.PeftModel, "from_pretrained", "adapter")
    hook(peft.tuners.lora.LoraModel, "merge_and_unload", "adapter")
hook(generate.SqlGenerator, "backend", "llg tokenizer", prop=True)
hook(generate.SqlGenerator, "_grammar_spec", "grammar")
hook(generate.SqlGenerator, "_prefix", "schema prefill")
hook(generate.SqlGenerator, "candidates", "decode")
hook(generate.SqlGenerator, "__init__", "generator setup")
hook(api.Pipeline, "_attempt", "check + run")
hook(api.Pipeline, "schema", "warehouse")
hook(api.Pipeline, "values", "warehouse")
hook(api.Pipeline, "link_index", "warehouse")

_enter("other")
pipe = api.Pipeline()
a = pipe.ask(QUESTION)
_leave()
import resource
out = {"wall": wall, "cpu": cpu, "t0_wall": T0, "t0_cpu": C0, "sql": a.sql, "error": a.error,
       "main_cpu": time.thread_time(), "all_cpu": time.process_time(),
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "rows": None if a.df is None else a.df.values.tolist()[:5], "end_wall": time.perf_counter()}
print("COLDSTART " + json.dumps(out, default=str))
'''


def run_child(question: str, env: dict) -> dict:
    code = f"QUESTION = {question!r}\n" + CHILD
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((l for l in p.stdout.splitlines() if l.startswith("COLDSTART ")), None)
    if p.returncode or line is None:
        raise SystemExit(f"the child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(line[len("COLDSTART "):])
    cpu_total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    wall, cpu = r["wall"], r["cpu"]
    # perf_counter is CLOCK_MONOTONIC, shared by both processes: spawn -> the driver's first line is the
    # interpreter's start; the driver's last line -> exit is teardown (freeing the model), counted as other
    wall["interpreter"] = r["t0_wall"] - t0
    cpu["interpreter"] = r["t0_cpu"]
    wall["exit"] = t0 + total - r["end_wall"]
    # main-thread CPU per stage: what a stage costs on the critical path, steady under other jobs' load; the
    # background thread (llguidance's tokenizer) is reported apart; exit's CPU counts as other
    main_cpu = sum(cpu.values())  # to the answer
    cpu["exit"] = max(0.0, cpu_total - r["all_cpu"])
    return {"total_wall": total, "answer_wall": r["end_wall"] - t0, "total_cpu": cpu_total, "main_cpu": main_cpu,
            "background_cpu": r["all_cpu"] - r["main_cpu"], "peak_rss_mb": r["peak_rss_mb"], "wall": wall,
            "cpu": cpu, "sql": r["sql"], "error": r["error"], "rows": r["rows"]}


def run_cli(question: str, env: dict) -> dict:
    """`nl2sql ask` itself, as a user types it: wall seconds and the answer's first line."""
    t0 = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).with_name("nl2sql")), "ask", question], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    total = time.perf_counter() - t0
    return {"total_wall": total, "rc": p.returncode, "sql": p.stdout.splitlines()[0] if p.stdout else p.stderr[-300:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--question", default="How many customers are there?")
    ap.add_argument("--cli", action="store_true", help="also time the `nl2sql ask` console script")
    ap.add_argument("--json", help="write the runs here")
    ap.add_argument("--eager-bitmask", action="store_true",
                    help="replace llguidance.torch (torch.compile'd mask kernel) by plain torch in the child")
    args = ap.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.eager_bitmask:
        env["COLDSTART_EAGER_BITMASK"] = "1"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", file=sys.stderr)
    runs = []
    for i in range(args.runs):
        r = run_child(args.question, env)
        runs.append(r)
        print(f"run {i + 1}: {r['answer_wall']:.2f} s wall to the answer ({r['total_wall']:.2f} s to exit), "
              f"{r['main_cpu']:.2f} s main-thread CPU, "
              f"{r['total_cpu']:.2f} s CPU all threads, {r['peak_rss_mb']:.0f} MB; "
              f"{r['sql']!r} -> {r['rows']} {r['error'] or ''}", file=sys.stderr)
    med = statistics.median
    print("\n| stage | wall s | main-thread CPU s |\n|---|---:|---:|")
    for s in STAGES:  # exit is shown after the total
        w, c = med([r["wall"].get(s, 0.0) for r in runs]), med([r["cpu"].get(s, 0.0) for r in runs])
        print(f"| {s} | {w:.2f} | {c:.2f} |")
    w, c = med([r["answer_wall"] for r in runs]), med([r["main_cpu"] for r in runs])
    print(f"| **to the answer** | **{w:.2f}** | **{c:.2f}** |")
    w, c = med([r["wall"]["exit"] for r in runs]), med([r["cpu"]["exit"] for r in runs])
    print(f"| exit (after the answer) | {w:.2f} | {c:.2f} |")
    print(f"\nbackground thread CPU {med([r['background_cpu'] for r in runs]):.2f} s; all threads "
          f"{med([r['total_cpu'] for r in runs]):.2f} s; peak memory {max(r['peak_rss_mb'] for r in runs):.0f} MB "
          f"(medians of {len(runs)} runs, the largest peak; load average {os.getloadavg()[0]:.1f})")
    if args.cli:
        c = [run_cli(args.question, env) for _ in range(args.runs)]
        print(f"`nl2sql ask`: median {med([x['total_wall'] for x in c]):.2f} s wall; {c[0]['sql']}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One decoding step of a batch of demo questions (real model): full cache per row vs one shared schema prefix.

Builds the first Q demo questions' requests (4 candidates each, as `nl2sql serve` does: Q=8 is 32 rows), adds
them to a DecodeBatch and takes `--warmup` real steps, then times `--steps` forwards of the model over the batch
(one more token per row each: the short demo answers would otherwise leave the batch within a few steps). Grammar
masks, the binder and sampling are not in it (the end-to-end figure is benchmarks/serve_concurrency.py). The two
layouts alternate, `--rounds` times; medians, the KV bytes the batch holds and its prefix copies are reported.

    NL2SQL_THREADS=2 .venv/bin/python benchmarks/decode_step.py [--questions 8] [--steps 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kv_bytes(batch) -> int:
    held = sum(t.numel() * t.element_size() for layer in batch.cache.layers for t in (layer.keys, layer.values))
    shared = sum(t.numel() * t.element_size() for p in batch.prefixes for t in p.keys + p.values)
    return held + shared


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import torch

    from nl2sql.api import Pipeline, _seed
    from nl2sql.config import Settings
    from nl2sql.evaluate import demo_cases
    from nl2sql.generate import DecodeBatch, GenRequest
    from nl2sql.grammar import sql_grammar
    from nl2sql.prompt import build_prompt, render_schema

    settings = Settings.from_env()
    pipe = Pipeline(settings)
    gen, schema = pipe.generator, pipe.schema(None)
    questions = [c.question if hasattr(c, "question") else c["question"] for c in demo_cases()][: args.questions]
    reqs = []
    for q in questions:
        sch = pipe.link(schema, q).schema
        # a generous token budget, no binder: every row decodes for all the timed steps
        reqs.append(GenRequest(build_prompt(sch, q, []), sql_grammar(sch), 256, prefix=render_schema(sch) + "\n",
                               n=args.candidates, seed=_seed(q), temperature=settings.temperature))
    results = {False: [], True: []}
    for rnd in range(args.rounds):
        for shared in (False, True):
            batch = DecodeBatch(gen, shared_prefix=shared)
            for r in reqs:
                batch.add(r)
            for _ in range(args.warmup):     # real steps: the caches hold the question and a few SQL tokens
                batch.step()
            assert batch.rows and batch.shared == shared
            n = len(batch.rows)
            feed = torch.tensor([[r.ids[-1] if r.ids else 0] for r in batch.rows])
            pos = torch.tensor([[o.n_ids + len(r.ids) - 1] for r, o in zip(batch.rows, batch.owner)])
            fwd, cpu = [], []
            with torch.inference_mode():
                for k in range(args.steps):  # then the model's forward alone, one more token per row each time
                    batch.attn = torch.cat([batch.attn, torch.ones((n, 1), dtype=torch.long)], dim=1)
                    t, c = time.perf_counter(), time.process_time()
                    mask = batch.attn
                    if shared:
                        step = batch._cascade_step()
                        mask = {"full_attention": step, "sliding_attention": step}
                    gen.inner(input_ids=feed, attention_mask=mask, position_ids=pos + k, past_key_values=batch.cache,
                              use_cache=True)
                    fwd.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
            results[shared].append((statistics.median(fwd), statistics.median(cpu), n, kv_bytes(batch), batch.cache.layers[0].keys.shape[2],
                                    len(batch.prefixes)))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.questions} demo questions x {args.candidates} candidates, torch threads {torch.get_num_threads()}, "
          f"{args.steps} forwards after {args.warmup} steps, {args.rounds} rounds")
    print("| layout | model forward ms (median wall) | CPU ms (process) | rows | batch KV MB | cache slots per row "
          "| prefix copies |")
    print("|---|---|---|---|---|---|---|")
    for shared in (False, True):
        rs = results[shared]
        fwd = statistics.median(r[0] for r in rs) * 1e3
        cpu = statistics.median(r[1] for r in rs) * 1e3
        _, _, rows, kv, slots, copies = rs[-1]
        name = "shared prefix (cascade)" if shared else "full cache per row"
        print(f"| {name} | {fwd:.1f} | {cpu:.1f} | {rows} | {kv / 1e6:.1f} | {slots} | {copies if shared else rows} |")
    print("per round, wall / CPU ms: " + "; ".join(f"{'shared' if k else 'full'} "
                                                   + ", ".join(f"{r[0] * 1e3:.0f}/{r[1] * 1e3:.0f}" for r in v)
                                         for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared-prefix ("cascade") attention in batched decoding (nl2sql/shared_prefix.py, DecodeBatch): the batch keeps
one copy of each schema prefix's KV and per-row caches only for what follows it, and every request still gets what
it gets alone, and what the full-cache-per-row layout gives.

The fast tests use a tiny random float32 Gemma 3 whose sliding window (32 slots) is shorter than the prompts: the
window starts inside the schema prefix for some rows, at different slots for rows of one prefix, and leaves the
prefix during decoding. The marked test runs the real bundled model on two databases."""
from __future__ import annotations

import pytest

from nl2sql.generate import DecodeBatch, GenRequest
from nl2sql.grammar import sql_grammar
from nl2sql.prompt import build_prompt, render_schema

from test_batching import SCHEMAS, request, same, tiny_generator   # the tiny tests' schemas and questions


@pytest.fixture(scope="module")
def tiny32(settings):
    return tiny_generator(settings, "tiny32", seed=3, heads=4, kv_heads=2, head_dim=16, window=32,
                          layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"])


def no_prefix(i: int, **kw) -> GenRequest:
    """A request whose prompt has no cached prefix: its whole prompt is its rows' own cache."""
    r = request(i, **kw)
    r.prefix = None
    return r


def drive(gen, plan, shared: bool):
    """Decode `plan` ([(step to join at, key, request)]) in one DecodeBatch; returns results by key and what the
    batch held after each step: (distinct prefixes, their batch sizes, cache slots per row, rows)."""
    batch = DecodeBatch(gen, shared_prefix=shared)
    assert batch.shared == shared
    handles, got, seen, step = {}, {}, [], 0
    while True:
        for at, key, req in plan:
            if at == step:
                handles[batch.add(req)] = key
        if not batch.rows:
            if step > max(at for at, _, _ in plan):
                break
            step += 1
            continue
        batch.step()
        step += 1
        got.update({handles[h]: out for h, out in batch.pop_finished()})
        if batch.rows:
            seen.append((len(batch.prefixes), [p.keys[0].shape[0] for p in batch.prefixes],
                         batch.cache.layers[0].keys.shape[2], len(batch.rows)))
    return got, seen


def test_one_prefix_copy_per_database_and_the_answers_of_each_alone(tiny32):
    """Two databases, a request joining mid-decode on each, one leaving early: per distinct prefix one copy with
    batch size 1; the rows' cache holds no prefix; every request gets what it gets alone, and what the
    full-cache-per-row layout gives it in the same batch."""
    plan = [(0, "shop-short", request(0, max_new_tokens=4)), (0, "music", request(1, max_new_tokens=12)),
            (3, "shop-long", request(2, max_new_tokens=14)), (3, "music-2", request(3, max_new_tokens=10))]
    cascade, seen = drive(tiny32, plan, shared=True)
    full, _ = drive(tiny32, plan, shared=False)
    alone = {key: tiny32.candidates_many([req])[0] for _, key, req in plan}
    assert set(cascade) == set(full) == set(alone)
    for key in alone:
        assert same(alone[key], cascade[key]), key
        assert same(full[key], cascade[key]), key
    assert any(g.ids for gens in cascade.values() for g in gens)
    prefix_len = min(len(tiny32.loaded.tokenizer(render_schema(s) + "\n")["input_ids"]) for s in SCHEMAS)
    assert max(n for n, _, _, _ in seen) == 2            # both databases in the batch at once: two copies, no more
    for n, sizes, slots, rows in seen:
        assert sizes == [1] * n                          # each prefix once, not once per row
        assert rows > n                                  # ... read by several rows
    assert seen[0][2] < prefix_len                       # the rows' own cache: question and SQL tokens only


def test_a_request_without_a_cached_prefix_decodes_beside_shared_ones(tiny32):
    """A prompt with no cached prefix (prefix length 0) keeps its whole prompt in its rows and still gets its
    alone answer, in a batch with two shared prefixes."""
    plan = [(0, "shop", request(0)), (0, "plain", no_prefix(2)), (2, "music", request(1))]
    cascade, seen = drive(tiny32, plan, shared=True)
    for _, key, req in plan:
        assert same(tiny32.candidates_many([req])[0], cascade[key]), key
    assert max(n for n, _, _, _ in seen) == 2
    assert max(slots for _, _, slots, _ in seen) > len(tiny32.loaded.tokenizer(plan[1][2].prompt)["input_ids"])


def test_the_sliding_window_starts_inside_the_prefix_and_leaves_it(tiny32, monkeypatch):
    """The cases the prefix part's window handles, checked to occur: some rows' window starts inside the prefix
    (a partial read), rows of one prefix start at different slots (a per-row mask), and some rows' window has
    left the prefix (no prefix part for them); the answers are those alone and those of the full-cache layout."""
    from nl2sql.shared_prefix import CascadeStep
    seen = []
    original = CascadeStep.prefix_window

    def spy(group, window, heads_per_kv):
        lo, keep, mask = original(group, window, heads_per_kv)
        if window is not None:
            seen.append((lo, group.prefix.length, keep.numel(), group.rows.numel(), mask is not None))
        return lo, keep, mask
    plan = [(0, "a", request(0, max_new_tokens=12)), (0, "b", request(1, max_new_tokens=12)),
            (2, "c", request(2, max_new_tokens=12))]
    alone = {key: tiny32.candidates_many([req])[0] for _, key, req in plan}
    monkeypatch.setattr(CascadeStep, "prefix_window", staticmethod(spy))
    got, _ = drive(tiny32, plan, shared=True)
    monkeypatch.undo()
    full, _ = drive(tiny32, plan, shared=False)
    for key in alone:
        assert same(alone[key], got[key]) and same(full[key], got[key]), key
    assert any(0 < lo < length for lo, length, _, _, _ in seen)          # starts inside the prefix
    assert any(mask for *_, mask in seen)                               # rows of one prefix at different slots
    assert any(kept < rows for _, _, kept, rows, _ in seen)             # some rows no longer see the prefix


def test_off_is_the_full_cache_per_row(tiny32, monkeypatch):
    """NL2SQL_SHARED_PREFIX=0 (or another attention implementation) decodes as before: every row holds its prompt."""
    monkeypatch.setattr(tiny32, "shared_prefix", False)
    batch = DecodeBatch(tiny32)
    assert not batch.shared
    batch.add(request(0))
    batch.step()
    assert batch.prefixes == [] and batch.cache.layers[0].keys.shape[2] >= len(
        tiny32.loaded.tokenizer(request(0).prompt)["input_ids"])


@pytest.mark.model
def test_real_model_two_databases_one_joining_mid_batch_match_alone(settings, sqlite_db):
    """The bundled model: demo-warehouse questions and a concert_singer question that joins after a few steps
    decode together with one copy of each schema prefix, and each greedy answer is the SQL it gets alone."""
    from nl2sql.api import Pipeline, _seed
    pipe = Pipeline(settings)
    gen = pipe.generator

    def req(q, db=None):
        sch = pipe.link(pipe.schema(db), q).schema
        return GenRequest(build_prompt(sch, q, []), sql_grammar(sch), settings.max_new_tokens,
                          prefix=render_schema(sch) + "\n", n=2, binder=pipe.binder(sch), seed=_seed(q),
                          temperature=settings.temperature)
    plan = [(0, "customers", req("How many customers are there?")),
            (0, "price", req("Which product has the highest price?")),
            (0, "singers", req("How many singers are there?", str(sqlite_db))),
            (3, "oldest", req("What is the name of the oldest singer?", str(sqlite_db)))]
    got, seen = drive(gen, plan, shared=True)
    for _, key, r in plan:
        alone = gen.candidates_many([r])[0]
        assert got[key][0].text == alone[0].text and got[key][0].error is None, (key, alone[0].text, got[key][0].text)
    assert max(n for n, _, _, _ in seen) == 2
    assert all(sizes == [1] * n for n, sizes, _, _ in seen)
    assert max(slots for _, _, slots, _ in seen) < 200    # questions and SQL only; the schema prefixes are ~750 tokens

"""Batched generation across requests (nl2sql/generate.py DecodeBatch, nl2sql/batching.py): each question decoded
in a batch with others gets exactly what it gets alone.

Fast tests use a tiny random Gemma 3 (4 layers, a sliding window of 8 tokens, float32) with the real tokenizer and
the real grammar machinery, so left padding, merging mid-decode, leaving the batch and the sliding window are all
exercised; the marked test runs the real bundled model on demo questions."""
from __future__ import annotations

import threading

import pytest

from nl2sql.generate import DecodeBatch, GenRequest, RequestCancelled
from nl2sql.grammar import sql_grammar
from nl2sql.prompt import build_prompt, render_schema
from nl2sql.schema import Column, Schema, Table

SCHEMAS = [
    Schema("shop", "sqlite", (Table("customers", (Column("id", "INTEGER", primary_key=True), Column("name", "TEXT"),
                                                  Column("country", "TEXT"))),
                              Table("orders", (Column("id", "INTEGER", primary_key=True), Column("customer_id", "INTEGER"),
                                               Column("total", "REAL"))))),
    Schema("music", "sqlite", (Table("singer", (Column("singer_id", "INTEGER", primary_key=True), Column("name", "TEXT"),
                                                Column("age", "INTEGER"))),)),
]
QUESTIONS = [(0, "How many customers are there?"), (1, "What is the average age of singers?"),
             (0, "List the names of the customers from France ordered by the total of their orders, largest first."),
             (1, "Who is the oldest singer?")]


def tiny_generator(settings, name: str, *, seed: int, heads: int, kv_heads: int, head_dim: int, window: int,
                   layer_types: list[str]):
    """A randomly initialised 4-layer Gemma 3 with the bundled tokenizer: the real decoding path, in milliseconds."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from nl2sql.generate import SqlGenerator
    from nl2sql.model import LoadedModel, bundled_checkpoint
    tok = AutoTokenizer.from_pretrained(str(bundled_checkpoint(settings.cache_dir)))
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                              sliding_window=window, layer_types=layer_types, max_position_embeddings=4096)
    model = Gemma3ForCausalLM(config).eval()
    return SqlGenerator(LoadedModel(model, tok, name, None, None, "cpu"), sql_vocab_head=True)


@pytest.fixture(scope="module")
def tiny(settings):
    return tiny_generator(settings, "tiny", seed=0, heads=2, kv_heads=1, head_dim=32, window=8,
                          layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                       "sliding_attention"])


def request(i: int, n: int = 3, max_new_tokens: int = 12, forced=()) -> GenRequest:
    s, q = QUESTIONS[i]
    schema = SCHEMAS[s]
    return GenRequest(build_prompt(schema, q, []), sql_grammar(schema), max_new_tokens,
                      prefix=render_schema(schema) + "\n", n=n, seed=100 + i, temperature=1.0, forced=forced)


def same(a, b):
    """Same tokens, errors and backtracks, and log-probabilities equal up to float rounding (a row that saw a
    padded slot or another row's keys would differ far more than that)."""
    if [(g.ids, g.error, g.backtracks) for g in a] != [(g.ids, g.error, g.backtracks) for g in b]:
        return False
    return all(abs(x.logprob - y.logprob) < 1e-4 for x, y in zip(a, b))


def test_a_batch_of_questions_gets_what_each_gets_alone(tiny):
    alone = [tiny.candidates_many([request(i)])[0] for i in range(4)]
    together = tiny.candidates_many([request(i) for i in range(4)])
    assert all(len(g) == 3 for g in together)
    for a, b in zip(alone, together):
        assert same(a, b)
    assert any(g.ids for gens in together for g in gens)


def test_requests_joining_and_leaving_mid_decode_change_nothing(tiny):
    """Continuous batching: a request joins after a few steps (the longer prompt pads the batch on the left),
    a short one leaves early (its rows and the padding only it needed are dropped)."""
    alone = {i: tiny.candidates_many([request(i, max_new_tokens=m)])[0] for i, m in ((0, 4), (2, 14), (3, 10))}
    batch = DecodeBatch(tiny)
    got = {}
    handles = {batch.add(request(0, max_new_tokens=4)): 0, batch.add(request(3, max_new_tokens=10)): 3}
    for _ in range(3):
        batch.step()
    handles[batch.add(request(2, max_new_tokens=14))] = 2
    while batch.rows:
        batch.step()
        got.update({handles[h]: out for h, out in batch.pop_finished()})
    assert set(got) == {0, 2, 3}
    for i in got:
        assert same(alone[i], got[i]), i


def test_a_repair_branch_batches_with_others(tiny):
    first = tiny.candidates_many([request(1, n=1)])[0][0]
    forced = tuple(first.ids[:3])
    alone = tiny.candidates_many([request(1, n=1, forced=forced)])[0]
    together = tiny.candidates_many([request(0), request(1, n=1, forced=forced)])[1]
    assert same(alone, together) and together[0].ids[:3] == list(forced)


def test_a_cancelled_request_leaves_and_the_others_finish(tiny):
    alone = tiny.candidates_many([request(2)])[0]
    flag = threading.Event()
    batch = DecodeBatch(tiny)
    keep = batch.add(request(2))
    gone = batch.add(GenRequest(**{**request(3).__dict__, "cancelled": flag.is_set}))
    batch.step()
    flag.set()
    results = {}
    while batch.rows:
        batch.step()
        results.update(batch.pop_finished())
    assert isinstance(results[gone], RequestCancelled)
    assert same(alone, results[keep])


def test_the_batching_generator_serves_threads_together(tiny):
    from nl2sql.batching import BatchingGenerator, cancel_scope
    alone = [tiny.candidates_many([request(i)])[0] for i in range(4)]
    bg = BatchingGenerator(tiny, max_rows=8, window_s=0.05)   # 4 questions x 3 rows: two waves
    try:
        out: dict = {}

        def ask(i):
            r = request(i)
            out[i] = bg.candidates(r.prompt, r.grammar, r.max_new_tokens, prefix=r.prefix, n=r.n, seed=r.seed,
                                   temperature=r.temperature)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i in range(4):
            assert same(alone[i], out[i]), i
        assert bg.batches > 0          # some steps served more than one question
        stop = threading.Event()
        stop.set()
        with cancel_scope(stop), pytest.raises(RequestCancelled):
            r = request(0)
            bg.candidates(r.prompt, r.grammar, r.max_new_tokens, prefix=r.prefix, n=1)
    finally:
        bg.close()
    r = request(0)
    with pytest.raises(RequestCancelled):   # closed: a clear refusal, not a hang
        bg.candidates(r.prompt, r.grammar, r.max_new_tokens, prefix=r.prefix, n=1)


def test_the_decode_cache_grows_in_place_and_holds_what_concatenation_would(tiny):
    """The batch's KV cache appends a token by writing into spare room (DynamicLayer copies the whole layer each
    step); past its room, or after a merge replaced its tensors, it copies once and goes on. Contents: exactly
    what concatenation gives, through growth and replacement."""
    import torch
    from nl2sql.generate import _KV_SLACK, _full_cache
    torch.manual_seed(1)
    cache, keys = _full_cache(), []
    for step in range(2 * _KV_SLACK + 40):
        k = torch.randn(2, 1, 7 if step == 0 else 1, 4)
        keys.append(k)
        got, _ = cache.update(k, k + 1, 0)
        if step == 1:
            where = got.data_ptr()
        if step == 2:
            assert got.data_ptr() == where      # no copy while there is room
        if step == 5:                           # what a row selection or a merge does: new tensors
            layer = cache.layers[0]
            layer.keys, layer.values = layer.keys.clone(), layer.values.clone()
        expected = torch.cat(keys, dim=-2)
        assert torch.equal(got, expected) and torch.equal(cache.layers[0].values, expected + 1)
    assert cache.get_seq_length() == 7 + 2 * _KV_SLACK + 39


def test_many_requests_admitted_at_once_match_one_by_one(tiny):
    """Requests added in one go are merged into the batch in one copy (left-padded to the longest); added step
    by step they are merged as they come: both give each request what it gets alone."""
    alone = [tiny.candidates_many([request(i, n=2)])[0] for i in range(4)]
    batch = DecodeBatch(tiny)
    handles = {batch.add(request(i, n=2)): i for i in (3, 0)}
    batch.step()
    handles.update({batch.add(request(i, n=2)): i for i in (2, 1)})   # two join together, mid-decode
    got = {}
    while batch.rows:
        batch.step()
        got.update({handles[h]: out for h, out in batch.pop_finished()})
    for i in range(4):
        assert same(alone[i], got[i]), i


def test_sliding_layers_reading_only_their_window_change_nothing(tiny, monkeypatch):
    """Decoding sliding-window layers read only the slots inside the window (nl2sql's SDPA wrapper); plain SDPA
    over the whole masked cache gives the same candidates. The tiny model's window is 8 slots and the skip
    threshold is lowered below the prompts' length, so every sliding layer of every step takes the short path."""
    from nl2sql import generate
    monkeypatch.setattr(generate, "_MIN_SKIP", 4)
    _MIN_SKIP = 4
    model = tiny.loaded.model
    assert model.config._attn_implementation == "nl2sql_sdpa"
    reqs = [request(i) for i in range(4)]
    assert all(len(tiny.loaded.tokenizer(r.prompt)["input_ids"]) > _MIN_SKIP + 8 for r in reqs)
    windowed = tiny.candidates_many(reqs)
    model.set_attn_implementation("sdpa")
    try:
        plain = tiny.candidates_many(reqs)
    finally:
        model.set_attn_implementation("nl2sql_sdpa")
    for a, b in zip(windowed, plain):
        assert same(a, b)


@pytest.mark.model
def test_real_model_batched_answers_match_alone(settings):
    """The bundled model on demo questions: every greedy candidate (the answer with NL2SQL_CANDIDATES=1) is the one
    it gets alone. Sampled candidates may differ by bfloat16 rounding at near ties (README: Serving many analysts)."""
    from nl2sql.api import Pipeline, _seed
    pipe = Pipeline(settings)
    gen, schema = pipe.generator, pipe.schema(None)
    reqs = []
    for q in ["How many customers are there?", "Which product has the highest price?",
              "How many orders were placed in 2023?", "What is the average order value?"]:
        sch = pipe.link(schema, q).schema
        reqs.append(GenRequest(build_prompt(sch, q, []), sql_grammar(sch), settings.max_new_tokens,
                               prefix=render_schema(sch) + "\n", n=2, binder=pipe.binder(sch), seed=_seed(q),
                               temperature=settings.temperature))
    alone = [gen.candidates_many([r])[0] for r in reqs]
    together = gen.candidates_many(reqs)
    for a, b in zip(alone, together):
        assert b[0].text == a[0].text and b[0].error is None, (a[0].text, b[0].text)


def test_a_candidate_that_writes_only_whitespace_is_abandoned_not_decoded_to_the_cap(tiny):
    """The grammar allows whitespace between any two tokens; a row stuck writing it stops at MAX_BLANK_RUN
    characters, with an error (it never votes), instead of running to the token budget."""
    from nl2sql.generate import MAX_BLANK_RUN
    tok = tiny.loaded.tokenizer
    forced = tuple(tok("SELECT", add_special_tokens=False)["input_ids"]) + tuple(
        tok("\n  " * 20, add_special_tokens=False)["input_ids"])
    [g] = tiny.candidates_many([request(0, n=1, max_new_tokens=200, forced=forced)])[0]
    assert g.error and "only spaces and line breaks" in g.error
    assert MAX_BLANK_RUN < len(tiny.decode(g.ids)) - len("SELECT") <= MAX_BLANK_RUN + 3 and g.tokens < 40
    formatted = tuple(tok("SELECT\n  COUNT(*)\nFROM", add_special_tokens=False)["input_ids"])
    [ok] = tiny.candidates_many([request(0, n=1, max_new_tokens=30, forced=formatted)])[0]
    assert ok.error is None or "spaces" not in ok.error   # a few line breaks are fine

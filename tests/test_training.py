"""Training: data prep rejects broken pairs with reasons; a tiny LoRA run moves adapter weights only;
a saved adapter reloads to the same model; the registry promotes and rolls back."""
import json

import pytest
import torch

from nl2sql import registry
from nl2sql.errors import ConfigError, TrainingError
from nl2sql.schema import Column, Schema, Table
from nl2sql.training.data import PrepReport, make_examples, read_jsonl, split_by_database

SCHEMA = Schema("shop", "sqlite", (Table("orders", (Column("order_id", "INTEGER", True), Column("status", "TEXT"))),))


def test_prep_rejects_broken_pairs_with_reasons():
    pairs = [
        {"question": "How many orders?", "sql": "SELECT count(*) FROM orders", "db": "shop"},
        {"question": "How many orders?", "sql": "SELECT COUNT(*) FROM orders", "db": "shop"},   # duplicate once normalised
        {"question": "Drop them", "sql": "DROP TABLE orders", "db": "shop"},
        {"question": "Price?", "sql": "SELECT price FROM orders", "db": "shop"},
        {"question": "Broken", "sql": "SELEC * FROM", "db": "shop"},
        {"question": "Gone", "sql": "SELECT 1", "db": "deleted_db"},
        {"question": "", "sql": "SELECT 1", "db": "shop"},
    ]
    report = PrepReport()
    kept = make_examples(pairs, {"shop": SCHEMA}, report)
    assert [e.sql for e in kept] == ["SELECT COUNT(*) FROM orders"]
    assert report.duplicates == 1 and sum(report.dropped.values()) == 5
    reasons = " ".join(report.dropped)
    assert "read-only" in reasons and "deleted_db" in reasons and "does not parse" in reasons


@pytest.mark.parametrize("content,needle", [("", "holds no pairs"), ("{not json\n", "not valid JSON"), ("[1, 2]\n", "not a JSON object")])
def test_bad_log_files(tmp_path, content, needle):
    f = tmp_path / "log.jsonl"
    f.write_text(content)
    with pytest.raises(TrainingError, match=needle):
        read_jsonl(f)


def test_split_keeps_databases_apart():
    ex = make_examples([{"question": f"q{i}", "sql": "SELECT order_id FROM orders", "db": f"db{i % 5}"} for i in range(20)],
                       {f"db{i}": SCHEMA for i in range(5)})
    train, val = split_by_database(ex, 0.2)
    assert {e.db for e in train}.isdisjoint({e.db for e in val}) and len(val) > 0


def test_tiny_lora_run_moves_only_adapter_weights(tmp_path, settings):
    from safetensors.torch import load_file

    from nl2sql.model import bundled_checkpoint
    from nl2sql.training.sft import TrainConfig, train
    ckpt = bundled_checkpoint(settings.cache_dir)
    base_before = load_file(str(ckpt / "model.safetensors"))
    probe = "model.layers.0.self_attn.q_proj.weight"
    examples = [{"prompt": f"-- Question: {q}\n-- SQL:\n", "sql": s} for q, s in
                [("How many orders?", "SELECT COUNT(*) FROM orders"), ("List statuses", "SELECT DISTINCT status FROM orders"),
                 ("First order", "SELECT order_id FROM orders ORDER BY order_id LIMIT 1"), ("All", "SELECT * FROM orders")]]
    cfg = TrainConfig(out=str(tmp_path / "a"), epochs=1, batch_size=2, grad_accum=1, lr=1e-3, lora_r=4, lora_alpha=8,
                      save_every=1, cache_dir=str(settings.cache_dir), dtype="float32", seed=3)
    meta = train(cfg, examples, progress=False)
    assert meta["steps"] == 2 and meta["tokens"] > 0
    adapter = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it
    torch.testing.assert_close(load_file(str(ckpt / "model.safetensors"))[probe], base_before[probe])
    assert not (tmp_path / "a" / "checkpoint").exists()  # checkpoints are cleaned up after a finished run


def test_saved_adapter_reloads_identically(tmp_path, settings):
    from nl2sql.model import load
    from nl2sql.registry import PACKAGE_ADAPTER
    a = load(settings.replace(adapter=str(PACKAGE_ADAPTER), dtype="float32"))
    b = load(settings.replace(adapter=str(PACKAGE_ADAPTER), dtype="float32"))
    ids = a.tokenizer("-- Question: How many singers?\n-- SQL:\n", return_tensors="pt")
    with torch.inference_mode():
        torch.testing.assert_close(a.model(**ids).logits, b.model(**ids).logits)
        base = load(settings.replace(adapter="none", dtype="float32"))
        assert not torch.allclose(a.model(**ids).logits, base.model(**ids).logits)  # the adapter changes the model


def test_registry_promote_and_rollback(tmp_path):
    data = tmp_path / "data"
    for v in ("a1", "a2"):
        src = tmp_path / v
        src.mkdir()
        (src / "adapter_config.json").write_text("{}")
        (src / "card.json").write_text(json.dumps({"version": v}))
        registry.register(data, src, v)
    assert registry.promoted_adapter(data) is None  # registered is not promoted
    registry.promote(data, "a1")
    registry.promote(data, "a2")
    assert registry.promoted_adapter(data).name == "a2"
    assert registry.rollback(data) == "a1"
    assert registry.rollback(data) is None  # back to the shipped adapter
    with pytest.raises(ConfigError, match="No adapter version"):
        registry.promote(data, "a9")
    (registry.root(data) / "registry.json").write_text("{half")
    with pytest.raises(ConfigError, match="corrupt"):
        registry.promoted_adapter(data)


def _log(path, pairs, db):
    path.write_text("".join(json.dumps({"question": q, "sql": s, "db": db}) + "\n" for q, s in pairs))
    return path


def test_gate_refuses_a_worse_adapter(tmp_path, settings, sqlite_db, fake_pipeline, capsys):
    """A real (tiny) training run on a logged-pairs file; the gate scores both adapters by execution accuracy on the
    held-out pairs, here with a scripted model: the new adapter answers wrongly, so it is registered, not promoted."""
    import argparse

    from nl2sql.evaluate import run_eval
    from nl2sql.registry import PACKAGE_ADAPTER
    from nl2sql.training.pipeline import train_command
    pairs = [("How many singers are there?", "SELECT count(*) FROM singer"),
             ("List all singer names.", "SELECT name FROM singer"),
             ("What is the average singer age?", "SELECT avg(age) FROM singer"),
             ("How many concerts are there?", "SELECT count(*) FROM concert"),
             ("List the stadium names.", "SELECT name FROM stadium"),
             ("What is the oldest singer's age?", "SELECT max(age) FROM singer"),
             ("Which countries do singers come from?", "SELECT DISTINCT country FROM singer"),
             ("How many stadiums are there?", "SELECT count(*) FROM stadium"),
             ("List concert names.", "SELECT concert_name FROM concert"),
             ("What is the youngest singer's age?", "SELECT min(age) FROM singer")]
    log = _log(tmp_path / "log.jsonl", pairs, str(sqlite_db))
    data = tmp_path / "data"
    s = settings.replace(data_dir=data, adapter=str(PACKAGE_ADAPTER), dtype="float32")
    scored = {}

    def score(adapter, cases, settings):
        # the candidate answers every held-out question with a wrong query; the current adapter with the gold one
        worse = adapter != str(PACKAGE_ADAPTER)
        pipe = fake_pipeline(*["SELECT 12345" if worse else c.gold for c in cases])
        scored[adapter] = run_eval(cases, pipe, None, progress=False)["execution_accuracy"]
        return scored[adapter]

    args = argparse.Namespace(log=str(log), spider=None, out=str(tmp_path / "run"), epochs=0.25, max_examples=0,
                              no_promote=False, force=False)
    assert train_command(args, s, score=score) == 0
    out = capsys.readouterr().out
    version = registry.list_adapters(data)[0]["version"]
    card = json.loads((registry.root(data) / version / "card.json").read_text())
    assert card["eval"]["validation_accuracy"] == 0.0 and card["eval"]["previous_adapter_accuracy"] == 1.0
    assert card["data"]["val_examples"] >= 1 and card["training"]["steps"] >= 1
    assert registry.promoted_adapter(data) is None      # the shipped adapter stays in use
    assert "kept the current adapter" in out and version in out


def test_exported_query_log_becomes_training_examples(tmp_path, settings, sqlite_db):
    """What the app logs (a correction, a thumbs-up, a thumbs-down, a follow-up) is what training reads."""
    from nl2sql.querylog import QueryLog
    from nl2sql.training.data import PrepReport
    from nl2sql.training.pipeline import log_examples
    log = QueryLog(tmp_path / "log.sqlite")
    db = str(sqlite_db)
    a = log.record(question="How many singers?", db=db, sql="SELECT COUNT(*) FROM singer", executed=True, dialect="sqlite")
    log.feedback(a, rating=1)
    b = log.record(question="Oldest singer?", db=db, sql="SELECT name FROM singer", executed=True, dialect="sqlite")
    log.feedback(b, rating=-1, corrected_sql="SELECT name FROM singer ORDER BY age DESC LIMIT 1")
    c = log.record(question="Now only from France", db=db, sql="SELECT COUNT(*) FROM singer WHERE country = 'France'",
                   executed=True, dialect="sqlite", context=[["How many singers?", "SELECT COUNT(*) FROM singer"]])
    log.feedback(c, rating=1)
    d = log.record(question="Wrong one", db=db, sql="SELECT age FROM singer", executed=True, dialect="sqlite")
    log.feedback(d, rating=-1)
    assert log.export_training(tmp_path / "pairs.jsonl") == 4
    report = PrepReport()
    examples = log_examples(tmp_path / "pairs.jsonl", settings, report)
    assert [e.question for e in examples] == ["How many singers?", "Oldest singer?", "Now only from France"]
    assert "ORDER BY Age DESC" in examples[1].sql                      # the correction, not the generated SQL
    follow_up = examples[2].prompt
    assert follow_up.index("How many singers?") < follow_up.index("Now only from France")  # context kept


def test_shared_schema_prefix_gives_the_same_loss_and_gradients(settings):
    """Training runs the schema once per batch and reuses its KV cache; that must change nothing but the cost."""
    from peft import LoraConfig, get_peft_model

    from nl2sql.training.sft import TARGET_MODULES, TrainConfig, collate, load_base, shared_prefix_len, sql_token_loss, tokenize
    model, tok, _ = load_base(TrainConfig(cache_dir=str(settings.cache_dir)), torch.float32)
    schema = "-- Database shop. Tables:\norders(order_id number pk, status text e.g. \"open\",\"shipped\", total number)\n"
    examples = [{"prompt": schema + f"-- Question: {q}\n-- SQL:\n", "sql": s} for q, s in
                [("How many orders?", "SELECT COUNT(*) FROM orders"), ("Open ones?", "SELECT * FROM orders WHERE status = 'open'"),
                 ("Largest total?", "SELECT MAX(total) FROM orders")]]
    items, _ = tokenize(examples, tok, 512)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES,
                                             task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # a trained-looking adapter, so the prefix's gradients matter
    batch = [0, 1, 2]
    shared = shared_prefix_len(items, batch)
    assert shared >= 32 and shared < min(items[j][1] for j in batch)
    ids, mask, labels = collate(items, batch, tok.pad_token_id, "cpu")
    results = []
    for s in (0, shared):
        model.zero_grad()
        loss, n = sql_token_loss(model, ids, mask, labels, s)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((loss.detach(), n, grads))
    (l0, n0, g0), (l1, n1, g1) = results
    assert n0 == n1
    torch.testing.assert_close(l1, l0, rtol=1e-4, atol=1e-5)
    assert ((g1 - g0).norm() / g0.norm()).item() < 1e-3


def test_synth_trains_a_first_adapter_from_the_schema(tmp_path, settings, sqlite_db, fake_pipeline, capsys):
    """`nl2sql train --synth`: pairs generated from the connected database (training/synth.py), checked, trained
    on (a real, tiny run) with retrieved neighbours in the prompts, gated, registered; train_meta.json records
    that the prompts carried examples, so inference retrieves them for this adapter (NL2SQL_EXAMPLES auto)."""
    import argparse

    from nl2sql.registry import PACKAGE_ADAPTER
    from nl2sql.training.pipeline import train_command
    data = tmp_path / "data"
    s = settings.replace(data_dir=data, adapter=str(PACKAGE_ADAPTER), dtype="float32", examples=3)
    args = argparse.Namespace(log=None, spider=None, synth=True, db=str(sqlite_db), synth_pairs=24,
                              out=str(tmp_path / "run"), epochs=0.1, max_examples=8, no_promote=True, force=False)
    assert train_command(args, s, score=lambda adapter, cases, settings: 0.5) == 0
    out = capsys.readouterr().out
    pairs = [json.loads(line) for line in (tmp_path / "run" / "synth_pairs.jsonl").read_text().splitlines()]
    assert 10 <= len(pairs) <= 24 and f"generated {len(pairs)} pairs" in out
    version = registry.list_adapters(data)[0]["version"]
    meta = json.loads((registry.root(data) / version / "train_meta.json").read_text())
    assert meta["config"]["prompt_examples"] == 3
    assert registry.promoted_adapter(data) is None and "not promoted: --no-promote" in out

"""Preference tuning (training/dpo.py): pairs from a real query log with every edge case counted; the DPO loss on a
tiny randomly initialised model (log 2 at the start, falling, the chosen SQL gaining); the stacked adapter equals
the reference plus the new LoRA; `nl2sql train --dpo`'s errors and (marked `model`) one real run end to end."""
import argparse
import json
import math

import pytest
import torch

from nl2sql import registry
from nl2sql.errors import ConfigError, TrainingError


def _export(log, tmp_path):
    from nl2sql.training.data import read_jsonl
    log.export_training(tmp_path / "pairs.jsonl")
    return read_jsonl(tmp_path / "pairs.jsonl")


def test_pairs_from_a_real_query_log_count_every_edge_case(tmp_path, settings, sqlite_db):
    from nl2sql.prompt import SQL_DIALECT, build_prompt
    from nl2sql.querylog import QueryLog
    from nl2sql.training.data import make_examples
    from nl2sql.training.dpo import preference_pairs
    from nl2sql.training.pipeline import log_knowledge
    from nl2sql.validate import validate
    log = QueryLog(tmp_path / "log.sqlite")
    db = str(sqlite_db)

    def ask(question, sql, rating=None, corrected=None, raw=None, context=None, on=db):
        e = log.record(question=question, db=on, sql=sql, raw_sql=raw, executed=sql is not None, dialect="sqlite",
                       context=context)
        log.feedback(e, rating=rating, corrected_sql=corrected)

    # a correction: the model's SQL is rejected, the analyst's chosen
    ask("Who is the oldest singer?", "SELECT name FROM singer", -1, "SELECT name FROM singer ORDER BY age DESC LIMIT 1")
    # a thumbs-up and, asked again, a thumbs-down on another answer: a pair across entries (case and spacing ignored)
    ask("How many singers are there?", "SELECT count(*) FROM singer", 1)
    ask("how many  singers are there?", "SELECT count(*) FROM concert", -1)
    # a thumbs-down with no correction and no right answer: no pair
    ask("What is the average capacity?", "SELECT max(capacity) FROM stadium", -1)
    # contradictory: the same SQL rated up and down for the same question: skipped
    ask("List the stadium names.", "SELECT name FROM stadium", 1)
    ask("List the stadium names.", "SELECT Name FROM stadium", -1)
    # a "correction" identical to what the model wrote (once normalised)
    ask("Which countries do singers come from?", "SELECT DISTINCT country FROM singer", -1,
        "select distinct Country from singer")
    # a correction that no longer validates (a renamed column), and a model answer that never did
    ask("Concert years?", "SELECT year FROM concert", -1, "SELECT concert_year FROM concert")
    ask("Youngest singer?", None, -1, "SELECT min(age) FROM singer", raw="SELECT min(age FROM singer")
    # a follow-up: its prompt carries the question it followed
    ask("Only the French ones", "SELECT count(*) FROM singer", -1, "SELECT count(*) FROM singer WHERE country = 'France'",
        context=[["How many singers are there?", "SELECT count(*) FROM singer"]])
    # a database that is gone
    ask("How many rows?", "SELECT 1", -1, "SELECT 2", on=str(tmp_path / "deleted.sqlite"))
    # an unrated answer is not feedback at all
    log.record(question="Unrated", db=db, sql="SELECT 1", executed=True, dialect="sqlite")

    rows = _export(log, tmp_path)
    assert len(rows) == 11
    schemas, glossaries = log_knowledge(rows, settings)
    pairs, report = preference_pairs(rows, schemas, glossaries)
    schema = schemas[db]
    norm = lambda sql: validate(sql, schema, dialect=SQL_DIALECT).sql  # noqa: E731 - as training normalises SQL
    assert {(p.question, p.chosen, p.rejected) for p in pairs} == {
        ("Who is the oldest singer?", norm("SELECT name FROM singer ORDER BY age DESC LIMIT 1"), norm("SELECT name FROM singer")),
        ("How many singers are there?", norm("SELECT count(*) FROM singer"), norm("SELECT count(*) FROM concert")),
        ("Only the French ones", norm("SELECT count(*) FROM singer WHERE country = 'France'"),
         norm("SELECT count(*) FROM singer"))}
    assert report.pairs == 3 and report.rows == 11
    assert report.no_alternative == 1      # the average-capacity thumbs-down
    assert report.contradictory == 1       # the stadium names
    assert report.same_sql == 1            # the countries
    reasons = " ".join(report.invalid)
    assert report.invalid["chosen: The SQL names something the schema lacks"] == 1
    assert "rejected: " in reasons and "deleted.sqlite" in reasons   # the unparsable answer; the deleted database
    assert sum(report.invalid.values()) == 3
    assert report.chosen_only == 2         # the countries; "Youngest singer?", whose model SQL never parsed
    assert "not logged" in report.failed_candidates
    # prompts are what inference (and SFT) build: the same function, the follow-up's context included
    by_q = {p.question: p for p in pairs}
    sft = make_examples([{"question": "Who is the oldest singer?", "sql": "SELECT 1", "db": db}], schemas)[0]
    assert by_q["Who is the oldest singer?"].prompt == sft.prompt == build_prompt(schema, "Who is the oldest singer?")
    follow = by_q["Only the French ones"].prompt
    assert follow.index("How many singers are there?") < follow.index("Only the French ones")
    assert "3 preference pairs" in report.summary() and "rated up and down" in report.summary()


def test_dpo_loss_is_log_two_when_policy_is_the_reference():
    from nl2sql.training.dpo import dpo_loss
    lp = torch.tensor([-12.0, -30.5])
    loss, rc, rr = dpo_loss(lp, lp - 3, lp, lp - 3, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and rc.item() == 0 and rr.item() == 0
    better, rc, rr = dpo_loss(lp + 1, lp - 4, lp, lp - 3, beta=0.1)  # chosen up, rejected down: lower loss
    assert better.item() < math.log(2) and rc.item() > 0 > rr.item()
    with_sft, *_ = dpo_loss(lp, lp, lp, lp, beta=0.1, chosen_nll=torch.tensor([2.0, 4.0]), rpo_alpha=0.5)
    assert with_sft.item() == pytest.approx(math.log(2) + 0.5 * 3.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, settings):
    """A randomly initialised 2-layer Gemma 3 with the real tokenizer: the training code path, in seconds."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from nl2sql.model import bundled_checkpoint
    tok = AutoTokenizer.from_pretrained(str(bundled_checkpoint(settings.cache_dir)))
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                           sliding_window=64)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    Gemma3ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


SCHEMA = "-- Database shop. Tables:\norders(order_id number pk, status text, total number)\n" * 2
PAIRS = [{"prompt": SCHEMA + f"-- Question: {q}\n-- SQL:\n", "chosen": c, "rejected": r} for q, c, r in
         [("How many orders?", "SELECT COUNT(*) FROM orders", "SELECT order_id FROM orders"),
          ("Open ones?", "SELECT * FROM orders WHERE status = 'open'", "SELECT * FROM orders"),
          ("Largest total?", "SELECT MAX(total) FROM orders", "SELECT MIN(total) FROM orders")]]


def _random_lora(model, r, seed):
    from peft import LoraConfig, get_peft_model

    from nl2sql.training.sft import TARGET_MODULES
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGET_MODULES,
                                             task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05  # a trained-looking adapter (B starts at zero)
    return model


def test_dpo_training_starts_at_log_two_and_prefers_the_chosen_sql(tmp_path, tiny_base):
    from safetensors.torch import load_file

    from nl2sql.training.dpo import DpoConfig, train_dpo
    from nl2sql.training.sft import save_adapter, load_base
    # the adapter in use: a random LoRA; DPO's reference is the base with it merged
    model, _, _ = load_base(DpoConfig(base=str(tiny_base)), torch.float32)
    save_adapter(_random_lora(model, 4, seed=1), tmp_path / "current")
    cfg = DpoConfig(out=str(tmp_path / "run"), base=str(tiny_base), init_adapter=str(tmp_path / "current"),
                    epochs=8, lr=5e-3, batch_size=3, grad_accum=1, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                    dtype="float32", save_every=3)
    meta = train_dpo(cfg, PAIRS, progress=False)
    losses, chosen, margins = meta["loss_curve"], meta["chosen_reward_curve"], meta["margin_curve"]
    assert meta["pairs"] == 3 and meta["steps"] == 8
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)      # the new LoRA starts at zero: policy == reference
    assert losses[-1] < losses[0] - 0.02 and losses == sorted(losses, reverse=True)
    assert chosen[-1] > chosen[0] and margins[-1] > 0
    assert meta["peak_rss_gb"] < 10
    saved = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    ranks = {v.shape[0] for k, v in saved.items() if "lora_A" in k}
    assert ranks == {8}                                            # the adapter in use (4) and the new LoRA (4), stacked
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["r"] == 8
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "reference_logprobs.pt").exists()


def test_stacked_adapter_equals_the_reference_plus_the_new_lora(tmp_path, tiny_base):
    from peft import PeftModel

    from nl2sql.training.dpo import stack_adapters
    from nl2sql.training.sft import TrainConfig, load_base, save_adapter
    load = lambda: load_base(TrainConfig(base=str(tiny_base)), torch.float32)[0]  # noqa: E731
    first = _random_lora(load(), 4, seed=1)
    save_adapter(first, tmp_path / "first")
    merged = PeftModel.from_pretrained(load(), str(tmp_path / "first")).merge_and_unload()
    second = _random_lora(merged, 2, seed=2)
    save_adapter(second, tmp_path / "second")
    stack_adapters(tmp_path / "first", tmp_path / "second", tmp_path / "second")
    stacked = PeftModel.from_pretrained(load(), str(tmp_path / "second"))
    ids = torch.tensor([[2, 651, 1009, 5, 77, 300, 12, 9]])
    with torch.no_grad():
        want, got, bare = second(input_ids=ids).logits, stacked(input_ids=ids).logits, load()(input_ids=ids).logits
    assert (want - bare).abs().max() > 1e-3                          # the adapters do change the model
    assert (got - want).abs().max() < 0.02 * (want - bare).abs().max()  # bf16 storage aside, the same model


def _train_args(**kw):
    base = dict(log=None, spider=None, synth=False, out=None, epochs=None, max_examples=0, no_promote=False,
                force=False, dpo=True, beta=0.1, rpo_alpha=0.0)
    return argparse.Namespace(**{**base, **kw})


def test_cli_errors_name_the_fix(tmp_path, settings, sqlite_db, capsys):
    from nl2sql.cli import main
    from nl2sql.querylog import QueryLog
    from nl2sql.training.pipeline import train_command
    data = tmp_path / "data"
    s = settings.replace(data_dir=data, adapter="none")
    with pytest.raises(TrainingError, match="exported query log") as e:
        train_command(_train_args(), s)
    assert "nl2sql log export" in e.value.hint
    # feedback with no pair: a thumbs-up only and a thumbs-down with no correction
    log = QueryLog(tmp_path / "log.sqlite")
    up = log.record(question="How many singers?", db=str(sqlite_db), sql="SELECT count(*) FROM singer", executed=True)
    log.feedback(up, rating=1)
    down = log.record(question="Oldest?", db=str(sqlite_db), sql="SELECT name FROM singer", executed=True)
    log.feedback(down, rating=-1)
    log.export_training(tmp_path / "pairs.jsonl")
    with pytest.raises(TrainingError, match="No preference pairs") as e:
        train_command(_train_args(log=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "run")), s)
    assert "thumbs-down" in e.value.hint and "corrected SQL" in e.value.hint
    out = capsys.readouterr().out
    assert "1 thumbs-down with no correction" in out.replace("    ", " ").replace("  ", " ")
    with pytest.raises(TrainingError, match="--beta"):
        train_command(_train_args(log=str(tmp_path / "pairs.jsonl"), beta=0.0), s)
    # the adapter in use was trained for another base: it cannot be DPO's reference
    other = tmp_path / "other-base"
    other.mkdir()
    (other / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    (other / "card.json").write_text(json.dumps({"base_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="another base model"):
        train_command(_train_args(log=str(tmp_path / "pairs.jsonl")), s.replace(adapter=str(other)))
    assert not (registry.root(data) / "registry.json").exists()     # nothing registered by a refused run
    # through the command line: one line, no traceback
    assert main(["train", "--dpo", "--log", str(tmp_path / "pairs.jsonl"), "--adapter", "none",
                 "--out", str(tmp_path / "run2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No preference pairs") and "Traceback" not in err


@pytest.mark.model
def test_train_dpo_end_to_end_on_the_bundled_model(tmp_path, settings, sqlite_db, fake_pipeline, capsys):
    """`nl2sql train --dpo` on a real log: pairs, a real (short) DPO run on the bundled model on top of the shipped
    adapter, the gate (scripted answers), the registry and a card that records the DPO data and beta."""
    from nl2sql.evaluate import run_eval
    from nl2sql.querylog import QueryLog
    from nl2sql.registry import PACKAGE_ADAPTER
    from nl2sql.training.pipeline import train_command
    log = QueryLog(tmp_path / "log.sqlite")
    for q, wrong, right in [("Who is the oldest singer?", "SELECT name FROM singer", "SELECT name FROM singer ORDER BY age DESC LIMIT 1"),
                            ("How many concerts?", "SELECT count(*) FROM singer", "SELECT count(*) FROM concert"),
                            ("Stadium names?", "SELECT location FROM stadium", "SELECT name FROM stadium")]:
        e = log.record(question=q, db=str(sqlite_db), sql=wrong, executed=True, dialect="sqlite")
        log.feedback(e, rating=-1, corrected_sql=right)
    log.export_training(tmp_path / "pairs.jsonl")
    data = tmp_path / "data"
    s = settings.replace(data_dir=data, adapter=str(PACKAGE_ADAPTER), dtype="float32", examples=0)

    def score(adapter, cases, settings):
        return run_eval(cases, fake_pipeline(*[c.gold for c in cases]), None, progress=False)["execution_accuracy"]

    args = _train_args(log=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "run"), epochs=0.5, beta=0.2)
    assert train_command(args, s, score=score) == 0
    out = capsys.readouterr().out
    version = registry.list_adapters(data)[0]["version"]
    card = json.loads((registry.root(data) / version / "card.json").read_text())
    assert card["dpo"]["beta"] == 0.2 and card["dpo"]["pairs"] == 2 and card["dpo"]["held_out_questions"] == 1
    assert card["dpo"]["reference_adapter"] == str(PACKAGE_ADAPTER) and card["data"]["train_sha256"]
    assert card["dpo"]["pair_report"]["pairs"] == 3 and "DPO: 2 preference pairs" in (registry.root(data) / version / "card.md").read_text()
    assert f"promoted {version}" in out
    cfg = json.loads((registry.root(data) / version / "adapter_config.json").read_text())
    assert cfg["r"] == 32 + 16   # the shipped adapter and the DPO LoRA, one adapter

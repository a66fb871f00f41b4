"""The cold-start caches of nl2sql/model.py: the merged checkpoint (base + adapter, in the dtype it runs in) and
llguidance's tokenizer input. A cached load must give the very model, tokenizer and llguidance tokenizer an
uncached one does, and anything the model is made of changing (adapter promoted, rolled back or retrained in
place, another base, another dtype, a package upgrade) must miss the cache. A tiny Gemma 3 with the bundled
tokenizer stands in for the real model."""
import json
import os
import shutil

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, settings):
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from nl2sql.model import bundled_checkpoint
    tok = AutoTokenizer.from_pretrained(str(bundled_checkpoint(settings.cache_dir)))
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512)
    d = tmp_path_factory.mktemp("tiny-base")
    Gemma3ForCausalLM(config).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_adapter(base_dir, out, seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM
    model = get_peft_model(Gemma3ForCausalLM.from_pretrained(str(base_dir)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # B starts at zero: make the adapter change the model
    model.save_pretrained(out)
    return out


@pytest.fixture
def cfg(settings, tiny_base, tmp_path):
    adapter = make_adapter(tiny_base, tmp_path / "adapter", seed=1)
    return settings.replace(model=str(tiny_base), adapter=str(adapter), dtype="float32", cache_dir=tmp_path / "cache",
                            threads=1)


def _same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_cached_load_is_the_same_model(cfg):
    import llguidance.hf

    from nl2sql.model import llg_tokenizer, load, merged_entry, resolve_adapter
    first = load(cfg)
    entry = merged_entry(cfg.cache_dir, cfg.model, resolve_adapter(cfg.adapter, cfg.data_dir), "", torch.float32)
    assert first.source == cfg.model and (entry / "nl2sql_merged.json").exists()
    meta = json.loads((entry / "nl2sql_merged.json").read_text())
    assert meta["fast_tokenizer"] and meta["architecture"] == "Gemma3ForCausalLM"

    second = load(cfg)
    assert second.source == str(entry)  # read from the cache: no peft, no merge
    assert _same_weights(first, second)
    assert second.adapter == first.adapter and second.adapter is not None
    text = "-- Question: How many singers from 'Côte d'Ivoire'?\n-- SQL:\nSELECT count(*) FROM singer\t<eos>"
    assert type(second.tokenizer) is type(first.tokenizer)
    assert second.tokenizer(text)["input_ids"] == first.tokenizer(text)["input_ids"]
    ids = first.tokenizer(text)["input_ids"]
    assert second.tokenizer.decode(ids, skip_special_tokens=True) == first.tokenizer.decode(ids, skip_special_tokens=True)
    # llguidance's tokenizer, built in the background from the cached input, is the one outlines would build
    assert second.llg_pending is not None
    cached, built = llg_tokenizer(second), llguidance.hf.from_tokenizer(first.tokenizer)
    assert cached.vocab_size == built.vocab_size and cached.eos_token == built.eos_token
    assert cached.tokenize_str(text) == built.tokenize_str(text)
    with torch.inference_mode():
        x = torch.tensor([ids])
        assert torch.equal(first.model(x).logits, second.model(x).logits)


def test_the_key_follows_what_the_model_is_made_of(cfg, tiny_base, tmp_path, monkeypatch):
    from nl2sql import model
    adapter = model.resolve_adapter(cfg.adapter, cfg.data_dir)

    def key(a=adapter, dtype=torch.float32):  # the hash part of the entry's name (the rest is for people)
        return model.merged_entry(cfg.cache_dir, cfg.model, a, "", dtype).name.rsplit("-", 1)[1]

    assert key() == key()
    other = make_adapter(tiny_base, tmp_path / "other", seed=2)
    assert len({key(), key(a=None), key(a=other), key(dtype=torch.bfloat16)}) == 4
    # an adapter retrained or rolled back in place (same path, other weights) is another entry
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    assert key(a=moved) == key()  # keyed by content, not by where it sits
    shutil.copy(other / "adapter_model.safetensors", moved / "adapter_model.safetensors")
    assert key(a=moved) == key(a=other)
    # a base whose files change, and an upgrade of a package that reads or writes the entry
    before = key()
    os.utime(tiny_base / "config.json", ns=(1, 1))
    assert key() != before
    current = key()
    monkeypatch.setattr(model, "_versions", lambda: {"transformers": "99.0"})
    assert key() != current
    assert model.merged_entry(cfg.cache_dir, "google/gemma-3-270m", adapter, "", torch.float32) is None


def test_a_promoted_adapter_is_not_served_from_the_old_entry(cfg, tiny_base, tmp_path):
    from nl2sql.model import load
    a = load(cfg)
    b_dir = make_adapter(tiny_base, tmp_path / "b", seed=3)
    b = load(cfg.replace(adapter=str(b_dir)))
    assert not _same_weights(a, b)
    # the same adapter directory overwritten (a retrain into the same folder): the new weights, not the cached
    shutil.copy(b_dir / "adapter_model.safetensors", tmp_path / "adapter" / "adapter_model.safetensors")
    again = load(cfg)
    assert _same_weights(again, load(cfg.replace(adapter=str(b_dir))))


def test_a_damaged_entry_is_rebuilt(cfg, capsys):
    from nl2sql.model import load, merged_entry, resolve_adapter
    first = load(cfg)
    entry = merged_entry(cfg.cache_dir, cfg.model, resolve_adapter(cfg.adapter, cfg.data_dir), "", torch.float32)
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a half-written or corrupted file
    again = load(cfg)
    assert "unreadable" in capsys.readouterr().err
    assert _same_weights(first, again)
    assert load(cfg).source == str(entry)  # rebuilt, and read from the cache again


def test_old_entries_are_pruned(tmp_path):
    from nl2sql.model import MERGED_KEEP, _prune_merged
    for i in range(MERGED_KEEP + 2):
        d = tmp_path / f"entry{i}"
        d.mkdir()
        (d / "nl2sql_merged.json").write_text("{}")
        os.utime(d / "nl2sql_merged.json", (1000 + i, 1000 + i))
    (tmp_path / "entry9.tmp123").mkdir()  # left by a crashed save long ago
    os.utime(tmp_path / "entry9.tmp123", (1, 1))
    _prune_merged(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"entry{i}" for i in range(2, MERGED_KEEP + 2)]

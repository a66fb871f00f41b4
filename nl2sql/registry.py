"""The adapter registry: every trained adapter is a versioned PEFT directory with its card; one is promoted.

Layout under <data_dir>/adapters/:
    <version>/            adapter_config.json, adapter_model.safetensors, card.json, card.md
    registry.json         {"promoted": version|null, "history": [versions, oldest first]}
`ask()` loads the promoted adapter; with none promoted it loads the adapter shipped in the package.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .errors import ConfigError

PACKAGE_ADAPTER = Path(__file__).parent / "adapters" / "default"


def root(data_dir: Path) -> Path:
    return Path(data_dir) / "adapters"


def _read(data_dir: Path) -> dict:
    f = root(data_dir) / "registry.json"
    if not f.exists():
        return {"promoted": None, "history": []}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"The adapter registry {f} is corrupt.",
                          hint="Restore it from a backup or delete it to fall back to the shipped adapter.") from None


def _write(data_dir: Path, reg: dict) -> None:
    f = root(data_dir) / "registry.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(reg, indent=2))
    os.replace(tmp, f)  # atomic: a reader sees the old or the new registry, never half of one


def promoted_adapter(data_dir: Path) -> Path | None:
    reg = _read(data_dir)
    if reg.get("promoted"):
        p = root(data_dir) / reg["promoted"]
        if (p / "adapter_config.json").exists():
            return p
    return None


def new_version(data_dir: Path, prefix: str = "a") -> str:
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid() % 1000:03d}"


def register(data_dir: Path, adapter_dir: Path, version: str) -> Path:
    """Copy a finished adapter into the registry under `version` (not promoted)."""
    dest = root(data_dir) / version
    tmp = root(data_dir) / f".{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter_dir, tmp, ignore=shutil.ignore_patterns("checkpoint*", "README.md"))
    tmp.rename(dest)
    return dest


def list_adapters(data_dir: Path) -> list[dict]:
    """Every registered adapter with its card summary, plus the shipped one, newest first."""
    reg = _read(data_dir)
    rows = []
    r = root(data_dir)
    for d in sorted(r.iterdir() if r.exists() else [], reverse=True):
        if d.is_dir() and not d.name.startswith(".") and (d / "adapter_config.json").exists():
            card = json.loads((d / "card.json").read_text()) if (d / "card.json").exists() else {}
            rows.append({"version": d.name, "promoted": reg.get("promoted") == d.name, "path": str(d),
                         **{k: card.get(k) for k in ("created", "eval", "examples")}})
    if (PACKAGE_ADAPTER / "adapter_config.json").exists():
        card = json.loads((PACKAGE_ADAPTER / "card.json").read_text()) if (PACKAGE_ADAPTER / "card.json").exists() else {}
        rows.append({"version": card.get("version", "shipped"), "promoted": not reg.get("promoted"),
                     "path": str(PACKAGE_ADAPTER), **{k: card.get(k) for k in ("created", "eval", "examples")}})
    return rows


def promote(data_dir: Path, version: str) -> None:
    if not (root(data_dir) / version / "adapter_config.json").exists():
        known = [a["version"] for a in list_adapters(data_dir)]
        raise ConfigError(f"No adapter version {version!r} in the registry.",
                          hint=f"Known versions: {', '.join(known) or 'none'}.")
    reg = _read(data_dir)
    if reg.get("promoted") != version:
        reg["history"] = [v for v in reg.get("history", []) if v != version] + [version]
        reg["promoted"] = version
        _write(data_dir, reg)


def rollback(data_dir: Path) -> str | None:
    """Promote the adapter promoted before the current one (None: back to the shipped adapter)."""
    reg = _read(data_dir)
    hist = reg.get("history", [])
    if not reg.get("promoted"):
        raise ConfigError("Nothing to roll back: the shipped adapter is in use.", hint="Promote a version first.")
    hist = hist[:-1]
    reg["history"] = hist
    reg["promoted"] = hist[-1] if hist else None
    _write(data_dir, reg)
    return reg["promoted"]

"""nl2sql.training: its modules live in the repository's top-level training/ folder.

A wheel installs that folder here (pyproject.toml's package-dir). In a source checkout this file stands in for
it and points the package there, so `from nl2sql.training import ...` works the same in both (editable install,
plain checkout on sys.path, or the repository root as the working directory).
"""
from pathlib import Path as _Path

_SOURCE = _Path(__file__).resolve().parents[2] / "training"
if (_SOURCE / "__init__.py").is_file():  # (that folder's own __init__.py is empty; keep it so)
    __path__ = [str(_SOURCE)]
    __file__ = str(_SOURCE / "__init__.py")  # as installed: the package's files sit next to its __file__

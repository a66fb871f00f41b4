"""Packaging: `pip install .` gives one top-level package, nl2sql, holding the card's top-level training/ and
schemas/ folders as nl2sql.training and nl2sql.schemas (never top-level packages named training or schemas,
which would clash in a user's environment), with its data files; a checkout imports them the same way."""
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = sysconfig.get_paths()["purelib"]  # the test environment's dependencies (torch, sqlglot, ...)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built from a copy of the sources (so no stale build/ of the checkout can leak into it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("nl2sql", "training", "schemas"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "runs"))
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                        "-w", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return next(out.glob("nl2sql-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel unpacked as a site directory (what pip install puts in site-packages)."""
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    return site


def _run(code: str, *, pythonpath: list, cwd: Path) -> subprocess.CompletedProcess:
    # -S: no site-packages .pth files, so the checkout's editable install cannot answer for the wheel
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": ":".join(map(str, pythonpath)), "HF_HUB_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin"})


def test_wheel_has_only_the_nl2sql_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"nl2sql"}, tops
    top_level = zipfile.ZipFile(wheel).read(f"{dist_info.pop()}/top_level.txt").decode().split()
    assert top_level == ["nl2sql"]


def test_wheel_holds_the_folders_and_their_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for folder in ("training", "schemas"):
        for f in (ROOT / folder).iterdir():
            if f.suffix in (".py", ".sql", ".jsonl", ".json", ".yml"):
                expected.add(f"nl2sql/{folder}/{f.name}")
    for f in (ROOT / "nl2sql" / "adapters").rglob("*"):
        if f.is_file():
            expected.add(f.relative_to(ROOT).as_posix())
    expected |= {f"nl2sql/vocab/{f.name}" for f in (ROOT / "nl2sql" / "vocab").glob("*.json")}
    assert {"nl2sql/schemas/retail.sql", "nl2sql/schemas/demo_pairs.jsonl",
            "nl2sql/adapters/default/adapter_model.safetensors"} <= expected
    assert expected <= names, sorted(expected - names)
    # the package's own __init__ files, not the checkout's stand-ins that point at the top-level folders
    for folder in ("training", "schemas"):
        assert zipfile.ZipFile(wheel).read(f"nl2sql/{folder}/__init__.py") == (ROOT / folder / "__init__.py").read_bytes()


def test_installed_wheel_imports_and_runs(installed, tmp_path):
    code = """
import importlib.util, sys
import nl2sql, nl2sql.training.pipeline, nl2sql.training.sft, nl2sql.schemas.demo as demo
from nl2sql.cli import main
from nl2sql.config import Settings
site = {site!r}
for m in (nl2sql, nl2sql.training.pipeline, demo):
    assert m.__file__.startswith(site), m.__file__
assert importlib.util.find_spec("training") is None and importlib.util.find_spec("schemas") is None
settings = Settings.from_env(data_dir={data!r})
assert str(demo.demo_warehouse_path(settings)).startswith({data!r})  # built from the packaged retail.sql
res = nl2sql.execute("SELECT count(*) FROM customers", settings=settings)
print("customers", int(res.df.iloc[0, 0]))
""".format(site=str(installed), data=str(tmp_path / "data"))
    p = _run(code, pythonpath=[installed, SITE], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "customers 8000" in p.stdout


@pytest.mark.parametrize("installed_checkout", [True, False], ids=["editable", "plain-checkout"])
def test_checkout_imports_the_top_level_folders(installed_checkout, tmp_path):
    """From the repository root (what `python -m pytest` and `streamlit run app.py` do) and from elsewhere with
    only the checkout on the path, nl2sql.training and nl2sql.schemas are the top-level folders' modules."""
    code = """
import nl2sql.training.data as d, nl2sql.schemas.demo as s, nl2sql.schemas as pkg
print(d.__file__); print(s.__file__); print(pkg.__path__[0])
"""
    if installed_checkout:
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    else:
        p = _run(code, pythonpath=[ROOT, SITE], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == [str(ROOT / "training" / "data.py"), str(ROOT / "schemas" / "demo.py"),
                                str(ROOT / "schemas")]

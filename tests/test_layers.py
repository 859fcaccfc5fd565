"""The one-way layers are enforced by import-linter (pyproject [tool.importlinter]), and a back-import fails."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "experts", "router", "leaderboard", "training", "deployments", "cluster", "load_tests"]


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_tree_keeps_its_layers():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_a_planted_back_import_breaks_the_contract(tmp_path):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "core" / "planted.py").write_text("from cluster import cli  # core must not know the CLI\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and "core.planted -> cluster.cli" in r.stdout, r.stdout[-2000:]

"""The one-way layers are enforced by import-linter (pyproject [tool.importlinter]), and a back-import fails."""

import ast
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


# Modules whose import loads torch or matplotlib: the only first-party imports that may wait for the
# function that needs them, so that light commands and unit tests do not pay for them.
HEAVY_MODULES = ("experts.engines.transformers_engine", "experts.engines.vllm_engine", "training.planner_rl",
                 "training.scorer_dpo", "leaderboard.plots")
# cluster/ is the CLI: each command imports what it runs, so `flowrouter --help` and client commands start fast.
TOP_LEVEL_IMPORT_PACKAGES = ["core", "experts", "router", "leaderboard", "training", "deployments"]


def _deferred_light_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                first_party = top in PACKAGES
                heavy = any(name == h or name.startswith(h + ".") for h in HEAVY_MODULES)
                if (first_party and not heavy) or top in sys.stdlib_module_names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_light_imports_sit_at_the_top_of_the_module():
    """Deferred imports hide what a module depends on; only heavy modules and third-party libraries may wait."""
    found = [hit for pkg in TOP_LEVEL_IMPORT_PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))
             for hit in _deferred_light_imports(f)]
    assert not found, "import these at the top of the module:\n" + "\n".join(found)

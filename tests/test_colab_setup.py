"""The notebooks' Colab setup cell (llava_mini/colab.py): synced into every notebook, and run for real in a
simulated Colab kernel: a stand-in google.colab module, an empty working directory, a local clone URL.

The simulated kernel is a fresh venv whose only view of the installed dependencies is a plain path line
(.pth files there are not run, so this repository's own editable install is invisible: llava_mini is
missing, as on Colab). pip installs into that venv without fetching anything (no deps, no build isolation).
"""

import importlib.util
import stand_ins
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from llava_mini.colab import CLONE_DIR, SETUP_CELL, setup_cell

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def first_code_cell(notebook: dict) -> str:
    return "".join(next(c for c in notebook["cells"] if c["cell_type"] == "code")["source"])


def load_sync_script():
    return stand_ins.load_script("sync_setup_cell")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_starts_with_the_synced_setup_cell(path):
    source = first_code_cell(json.loads(path.read_text(encoding="utf-8")))
    assert source.startswith(SETUP_CELL + "\n\n"), f"{path.name} is out of date: run python scripts/sync_setup_cell.py"
    assert "from llava_mini" in source[len(SETUP_CELL):]  # the notebook's own imports stay after it


def test_syncing_replaces_only_the_setup_part_and_keeps_the_file_byte_identical(tmp_path):
    sync = load_sync_script()
    synced = NOTEBOOKS[0].read_text(encoding="utf-8")
    old_setup = 'import sys, subprocess\nif "google.colab" in sys.modules:\n    subprocess.run(["pip", "install", ".."])'
    stale = tmp_path / NOTEBOOKS[0].name
    stale.write_text(json.dumps(sync.with_setup_cell(json.loads(synced), old_setup), indent=1, ensure_ascii=False)
                     + "\n", encoding="utf-8")
    assert first_code_cell(json.loads(stale.read_text())).startswith(old_setup + "\n\n")
    assert sync.main(["--check", str(stale)]) == 1 and sync.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == synced
    assert sync.main(["--check", str(stale)]) == 0


def make_colab_kernel(root: Path) -> Path:
    """A python with this venv's packages importable but llava_mini not (a plain path: no .pth files run)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    (site_packages,) = root.glob("lib/python*/site-packages")
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


KERNEL = """
import json, os, sys, types
sys.modules["google.colab"] = types.ModuleType("google.colab")  # Colab's runtime has imported it
exec(open(sys.argv[1]).read())                                     # the notebook's first cell
import llava_mini, llava_mini.paths
print(json.dumps({"package": llava_mini.__file__, "data": str(llava_mini.paths.DATA_DIR),
                  "has_data": llava_mini.paths.DATA_DIR.is_dir(), "cwd": os.getcwd()}))
"""


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs git and a git checkout")
def test_on_colab_the_cell_clones_installs_and_imports_the_package(tmp_path):
    python = make_colab_kernel(tmp_path / "kernel")
    content = tmp_path / "content"  # Colab's empty working directory
    content.mkdir()
    (tmp_path / "cell.py").write_text(SETUP_CELL)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(LLAVA_MINI_REPO=str(REPO), PIP_NO_DEPS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_BUILD_ISOLATION="0")  # (pip reads "0" here as "no build isolation")
    missing = subprocess.run([python, "-c", "import llava_mini"], cwd=content, env=env, capture_output=True)
    assert missing.returncode != 0  # the simulated kernel really lacks the package

    run = subprocess.run([python, "-c", KERNEL, tmp_path / "cell.py"], cwd=content, env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    clone = content / CLONE_DIR
    found = json.loads(run.stdout.splitlines()[-1])
    assert Path(found["package"]) == clone / "llava_mini" / "__init__.py"
    assert Path(found["data"]) == clone / "data" and found["has_data"]
    assert Path(found["cwd"]) == clone / "notebooks"
    # pip really installed it: a new kernel (after a restart, say) imports the clone without the cell's path.
    fresh = subprocess.run([python, "-c", "import llava_mini; print(llava_mini.__file__)"], cwd=content, env=env,
                           capture_output=True, text=True, check=True)
    assert Path(fresh.stdout.strip()) == clone / "llava_mini" / "__init__.py"


def no_subprocess(*args, **kwargs):
    raise AssertionError(f"the setup cell ran a command: {args}")


@pytest.fixture
def package_missing(monkeypatch):
    """llava_mini reported missing, and any command the cell would run refused."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llava_mini"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.delenv("LLAVA_MINI_REPO", raising=False)


def test_outside_colab_the_cell_does_nothing(package_missing, monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    exec(setup_cell("https://example.invalid/llava_mini.git"), {})
    assert Path.cwd() == tmp_path and sys.path == path_before and list(tmp_path.iterdir()) == []


def test_without_a_repository_the_cell_says_how_to_set_one(package_missing, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="LLAVA_MINI_REPO"):
        exec(setup_cell(""), {})
    assert Path.cwd() == tmp_path and list(tmp_path.iterdir()) == []

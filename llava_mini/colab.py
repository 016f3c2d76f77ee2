"""The setup part of every notebook's first cell: on Colab, fetch and install the package when it is missing.

A notebook opened by itself in Colab runs in /content, with no repository around it, and the package needs
the repository (its data/ folder, paths.DATA_DIR). So the cell clones it into ./llava-mini, installs it
editable, makes it importable in the running kernel and moves into its notebooks/ folder, as in a local run.
Outside Colab, or where the package is installed already, it does nothing.

The repository's address is held here, in REPO_URL; the environment variable LLAVA_MINI_REPO overrides it
(a git URL, a local path or a file:// URL). scripts/sync_setup_cell.py writes SETUP_CELL into the notebooks.
"""

REPO_URL = ""  # the project's public git URL (empty: the cell asks for LLAVA_MINI_REPO)
CLONE_DIR = "llava-mini"  # not "llava_mini": that folder in the working directory would shadow the package


def setup_cell(repo_url: str = REPO_URL) -> str:
    """The cell's setup source. It holds no blank line: the notebook's own imports follow after one."""
    return f'''# Colab only: install llava_mini (from llava_mini/colab.py by scripts/sync_setup_cell.py; edit it there)
import importlib, importlib.util, os, subprocess, sys
if "google.colab" in sys.modules and importlib.util.find_spec("llava_mini") is None:
    _repo = os.environ.get("LLAVA_MINI_REPO") or "{repo_url}"
    if not _repo:
        raise RuntimeError("llava_mini is not installed and its repository is unknown: run "
                           "%env LLAVA_MINI_REPO=<git URL of llava_mini> in a cell above, then this cell again")
    _root = os.path.abspath("{CLONE_DIR}")
    if not os.path.isdir(_root):
        subprocess.run(["git", "clone", "-q", "--depth", "1", _repo, _root], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", _root], check=True)
    sys.path.insert(0, _root)  # pip's editable hook takes effect in new kernels; this one needs the path now
    importlib.invalidate_caches()
    os.chdir(os.path.join(_root, "notebooks"))  # relative paths as in a local run
    print(f"installed llava_mini from {{_repo}} into {{_root}}")'''


SETUP_CELL = setup_cell()

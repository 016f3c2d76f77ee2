"""The two ways to install (pip + pyproject.toml, conda + environment.yml) must list the same packages."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return {Requirement(r).name.lower(): Requirement(r) for r in reqs}


def environment_requirements() -> dict[str, Requirement]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s*- pip:\s*$", line))
    reqs = {}
    for line in lines[start + 1:]:
        m = re.match(r"\s+- (.+)$", line)
        if not m or m.group(1).startswith("-e"):
            continue
        r = Requirement(m.group(1).strip())
        reqs[r.name.lower()] = r
    return reqs


def test_same_packages_in_pyproject_and_environment_yml():
    pp, env = pyproject_requirements(), environment_requirements()
    assert set(pp) == set(env), f"only in pyproject: {set(pp) - set(env)}; only in environment.yml: {set(env) - set(pp)}"
    for name in pp:
        if name == "torch":  # the environment pins the CPU wheel; it must satisfy the project's range
            pinned = next(iter(env[name].specifier)).version
            assert pp[name].specifier.contains(pinned), f"torch {pinned} is outside {pp[name].specifier}"
        else:
            assert pp[name].specifier == env[name].specifier, f"{name}: {pp[name].specifier} vs {env[name].specifier}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make course" in readme
    assert re.search(r"^make test$", ci, re.M)

"""Shared test fixtures: a copy of this project in a temporary folder, with real git and dvc."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Subprocesses use this venv's python and dvc, no analytics, and a git identity of their own,
# since CI machines have none.
ENV = {
    **os.environ,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def sh(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in `cwd`; on an unexpected exit code, fail with its output."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def copy_project(destination: Path) -> Path:
    """Copy the files git would see (tracked, or new and not ignored) into a fresh git repo."""
    listed = sh("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not copied
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    sh("git", "init", "-q", "-b", "main", cwd=destination)
    sh("git", "add", "-A", cwd=destination)
    sh("git", "commit", "-q", "-m", "project", cwd=destination)
    return destination


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project, copied and run once with `dvc repro`. Do not change it: use `project`."""
    path = copy_project(tmp_path_factory.mktemp("built") / "project")
    sh("dvc", "repro", cwd=path)
    return path


@pytest.fixture
def project(built_project: Path, tmp_path: Path) -> Path:
    """A private copy of the built project (git repo and DVC cache included), free to change."""
    path = tmp_path / "project"
    shutil.copytree(built_project, path, symlinks=True)
    return path

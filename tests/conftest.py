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
    """Copy the files git tracks, as they are in the work tree, into a fresh git repo.

    Tracked files come with their uncommitted edits: the suite then tests the work in progress,
    which is what a developer runs it for. Files git does not track stay out, even when they are
    not ignored (scratch files, a new module not yet `git add`ed, a stray data file): a pull
    request's CI sees only what is committed, and so must these tests, so a new file counts once
    it is added to git's index. A tracked file deleted in the work tree is left out too.
    """
    listed = sh("git", "ls-files", "-z", "--cached", cwd=ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    sh("git", "init", "-q", "-b", "main", cwd=destination)
    sh("git", "add", "-A", cwd=destination)
    sh("git", "commit", "-q", "-m", "project", cwd=destination)
    return destination


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project, copied and run once with `dvc repro -f`. Do not change it: use `project`.

    -f runs every stage. A plain `dvc repro` skips a stage whose deps match dvc.lock and whose
    outputs, by the hashes in dvc.lock, are already in the cache: train_manual's model has the
    same bytes as train_module's, cached a moment before, so it was checked out, not trained
    (issue 9), and would prove nothing about the committed results.
    """
    path = copy_project(tmp_path_factory.mktemp("built") / "project")
    sh("dvc", "repro", "-f", cwd=path)
    return path


@pytest.fixture
def project(built_project: Path, tmp_path: Path) -> Path:
    """A private copy of the built project (git repo and DVC cache included), free to change."""
    path = tmp_path / "project"
    shutil.copytree(built_project, path, symlinks=True)
    return path

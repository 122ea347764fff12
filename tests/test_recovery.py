"""`make reset` after a failed experiment: back to the committed state, every time (issue 9)."""

import pytest

from tests.conftest import ROOT, sh

pytestmark = pytest.mark.e2e

# Few enough to keep the test short, enough to hit git's same-second stat cache: before
# `make reset`, the README's `git checkout -- params.yaml ...` missed the change in most tries.
TRIES = 4


def test_make_reset_restores_the_committed_state_after_a_failed_experiment(project):
    committed = (ROOT / "params.yaml").read_bytes()
    assert (project / "params.yaml").read_bytes() == committed
    for _ in range(TRIES):
        # Fails fast, in generate's params check, after DVC wrote the value into params.yaml
        # and removed generate's outputs.
        failed = sh("dvc", "exp", "run", "-S", "data.x_dist=gauss", cwd=project, check=False)
        assert failed.returncode != 0
        assert "data.x_dist = 'gauss' is not allowed" in failed.stderr
        assert b"x_dist: gauss" in (project / "params.yaml").read_bytes()

        sh("make", "reset", cwd=project)
        assert (project / "params.yaml").read_bytes() == committed
        assert sh("git", "status", "--porcelain", cwd=project).stdout == ""
        assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=project).stdout

"""How a stage reports an expected error: one line, exit code 2, no traceback."""

import gc

import pytest
import typer

from stages.cli import UserError, run


@pytest.fixture(autouse=True)
def unfreeze():
    """run() freezes the objects alive, as a stage does right before it exits: undo it here."""
    yield
    gc.unfreeze()


def app_that(raises: Exception | None) -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def main() -> None:
        if raises:
            raise raises

    return app


def test_a_user_error_is_one_line_on_stderr_and_exit_code_2(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["stage"])
    with pytest.raises(SystemExit) as end:
        run(app_that(UserError("params.yaml: lr = 'abc' is not allowed")))
    assert end.value.code == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "error: params.yaml: lr = 'abc' is not allowed\n")


def test_success_exits_0_and_any_other_error_is_not_hidden(monkeypatch):
    monkeypatch.setattr("sys.argv", ["stage"])
    with pytest.raises(SystemExit) as end:
        run(app_that(None))
    assert end.value.code == 0
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run(app_that(ZeroDivisionError("bug")))

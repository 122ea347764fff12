"""What every stage's command line shares: one way to report an expected error."""

import sys

import typer


class UserError(Exception):
    """A problem with the user's input (params, data, model files): reported without a traceback."""


def run(app: typer.Typer) -> None:
    """Run a stage's typer app; turn a UserError into one line on stderr and exit code 2."""
    try:
        app()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

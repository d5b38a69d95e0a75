"""The ``pneumo`` command: the Typer app with every command registered, the one mapping of errors to a line and
an exit code, and :func:`main`.

An error a person can act on (a :class:`~pneumo.errors.PneumoError`, an ``OSError``, an invalid config, a missing
optional extra) becomes ``error: <message>`` on stderr and the error's own exit code
(:data:`pneumo.errors.EXIT_CODES`): usage 2, unreadable input 3, anything else 1. Any other exception is a bug in our
own code and keeps its traceback; ``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from pneumo._version import __version__
from pneumo.cli import data, evaluate, predict, serve, train
from pneumo.cli.common import err

_state = {"debug": False}


def _error_line(exc: Exception) -> tuple[str, int] | None:
    """The one line and the exit code for an error a person can act on; None for a bug in our own code."""
    from pneumo.errors import PneumoError, missing_extra

    if isinstance(exc, ImportError) and not isinstance(exc, PneumoError):
        exc = missing_extra(exc)  # an optional part that is not installed: name the extra that installs it
        if exc is None:
            return None
    if isinstance(exc, PneumoError | OSError):
        text = str(exc)
        return (text.splitlines()[0] if text else type(exc).__name__), getattr(exc, "exit_code", 1)
    pydantic = sys.modules.get("pydantic")  # a ValidationError comes from a loaded pydantic: never import it here
    if pydantic is not None and isinstance(exc, pydantic.ValidationError):  # an invalid config: its first complaint
        first = exc.errors()[0]
        return f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}", 2  # a usage error, as ConfigError
    return None


class _PneumoGroup(TyperGroup):
    """The root group: runs the command and maps its errors, in this one place, to a line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            line = None if _state["debug"] else _error_line(exc)
            if line is None:
                raise
            from rich.markup import escape

            from pneumo.errors import visible

            err.print(f"[bold red]error:[/] {escape(visible(line[0]))}", highlight=False, soft_wrap=True)
            raise typer.Exit(line[1]) from None


app = typer.Typer(
    cls=_PneumoGroup,
    help="Pneumonia detection in pediatric chest X-rays: inspect data, train, evaluate, predict, explain, serve.\n\n"
    "Example: pneumo predict scan.jpeg",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect a dataset folder and split it by patient.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        print(f"pneumo {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    _state["debug"] = debug


# In the order `pneumo --help` lists them.
data_app.command("inspect")(data.data_inspect)
data_app.command("split")(data.data_split)
for fn in (train.train, train.finalize, train.models, evaluate.evaluate, evaluate.compare, predict.predict,
           predict.batch, predict.explain, train.export, train.ensemble, train.soup, evaluate.robustness,
           evaluate.adapt, evaluate.info, serve.serve):  # fmt: skip
    app.command()(fn)
app.command("dicom-listen")(serve.dicom_listen)
app.command()(serve.dicomweb)


def _flags_without_metavar(command) -> None:
    """On/off flags show no value type in the help (``--json``, not ``--json <bool>``); recursively."""
    ctx_class = getattr(command, "context_class", None)
    params = list(getattr(command, "params", ()))
    if ctx_class is not None:
        with contextlib.suppress(Exception):  # the help option is cosmetics: never let it stop the command
            params.append(command.get_help_option(ctx_class(command)))
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_without_metavar(sub)


def command():
    """The click command behind ``pneumo`` (typer builds it from :data:`app`), with the help cosmetics applied."""
    cmd = typer.main.get_command(app)
    _flags_without_metavar(cmd)
    return cmd


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``main([...])`` runs in-process (tests) and returns the exit code."""
    try:
        # Outside standalone mode click returns the code of a typer.Exit instead of raising it.
        rv = command().main(args=argv, prog_name="pneumo", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # click's own usage errors
        return int(exc.code or 0)
    except Exception as exc:
        # click's usage errors (typer vendors click, so match by shape rather than by class)
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if type(exc).__name__ == "Abort":
            return 1
        raise

"""The ``pneumo`` command line: parse, call one library function, print. One module per group of commands;
:mod:`pneumo.cli.root` holds the app, the one mapping of errors to exit codes and :func:`main`. Heavy imports stay
inside the commands, so that ``pneumo --help`` is instant."""

from pneumo.cli.root import app, command, main

__all__ = ["app", "command", "main"]

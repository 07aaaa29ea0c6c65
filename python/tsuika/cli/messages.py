"""The one place where errors become messages, for every command.

A :class:`~tsuika.errors.TsuikaError`, or an OS error about a user's path,
prints ``Error: <one line>`` on stderr and exits 1 (2 for a config or usage
error, as click does). ``tsuika --debug COMMAND`` (or ``TSUIKA_DEBUG=1``)
shows the traceback instead. Anything else is a bug and keeps its traceback.

Every command is a :class:`TsuikaCommand` and the ``tsuika`` group a
:class:`TsuikaGroup`, so this holds whether a command runs under the group
or on its own (as tests and ``accelerate launch`` run them).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import click

from tsuika.errors import TsuikaError

# OS errors that are about the user's files rather than about tsuika.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                  NotADirectoryError)  # fmt: skip
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.ENAMETOOLONG})
DEBUG_ENV = "TSUIKA_DEBUG"


def user_error_message(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an error that is the user's to fix, else None."""
    if isinstance(exc, TsuikaError):
        return _one_line(str(exc) or type(exc).__name__), exc.exit_code
    if isinstance(exc, OSError) and (
        isinstance(exc, USER_OS_ERRORS) or exc.errno in USER_ERRNOS or exc.filename
    ):
        if exc.filename is not None and exc.strerror:
            return _one_line(f"{exc.filename}: {exc.strerror}"), 1
        return _one_line(str(exc)), 1
    return None


def _one_line(message: str) -> str:
    return " ".join(message.split())


def debug_enabled(ctx: click.Context) -> bool:
    """``--debug`` on the ``tsuika`` group, or ``TSUIKA_DEBUG`` set to 1/true/yes/on."""
    if ctx.find_root().params.get("debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class _UserErrorsAsMessages:
    """Mixin for click commands: user errors from ``invoke`` become one ``Error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except Exception as exc:
            found = user_error_message(exc)
            if found is None or debug_enabled(ctx):
                raise
            message, code = found
            click.echo(f"Error: {message}", err=True)
            ctx.exit(code)


class TsuikaCommand(_UserErrorsAsMessages, click.Command):
    """A tsuika sub-command (``@click.command(cls=TsuikaCommand)``)."""


class TsuikaGroup(_UserErrorsAsMessages, click.Group):
    """A group of tsuika commands; its own sub-commands are :class:`TsuikaCommand` s."""

    command_class = TsuikaCommand

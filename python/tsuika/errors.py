"""The base of every error tsuika raises for a user, and the errors shared by layers.

Every exception class tsuika defines derives from :class:`TsuikaError` and
keeps the builtin base its callers catch (``class ConfigError(TsuikaError,
ValueError)``), so ``except ValueError`` still works while the CLI can turn
*any* tsuika error into a one-line message in one place
(``tsuika.cli.TsuikaGroup``). A ``TsuikaError`` is a problem with the user's
input (a file, a config value, an option); a bug stays a builtin error and
keeps its traceback.

This module is a leaf: it imports nothing from tsuika, so every layer (and
the Rust extension, whose ``ImageError`` family derives from it) may import it.
"""

from __future__ import annotations


class TsuikaError(Exception):
    """A problem with the user's input; the message names the file or key and what is wrong.

    ``exit_code`` is the CLI's exit status for it: 1, or 2 for a usage error
    (a bad command argument or config value), as click uses.
    """

    exit_code = 1


class ConfigError(TsuikaError, ValueError):
    """A run configuration that cannot be used; the message names file and key."""

    exit_code = 2


class MissingPackageError(TsuikaError, ImportError):
    """An optional package a setting needs is not installed; the message says what to install."""

"""The one base class of errors a user can fix: the CLI prints them as one line and exits 2.

Library code raises a subclass (ConfigError, DataError, EvalError, ...) whose message names the
file, line and field, or the config key; anything else reaching the CLI is an internal error
(exit 1, traceback with ``klear --debug``).
"""

from __future__ import annotations


class KlearError(Exception):
    """A problem with the user's input, settings or environment, fixable without changing code."""


class OutputError(KlearError):
    """An output path that would destroy something: an input, a directory, an existing file."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers send), raised like Ctrl-C so the same cleanup runs; exit 143."""

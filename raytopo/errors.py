"""User-facing errors.

A `RaytopoError` is bad input from a user (a wrong file, a config value out of range, a missing
checkpoint). Its message is one line that names the thing and what was expected; the CLI prints it
without a traceback and exits non-zero. Anything else is a bug and keeps its traceback.
"""


class RaytopoError(Exception):
    """Bad user input, reported as one line."""


class ConfigError(RaytopoError, ValueError):
    """A config field has a value outside what it allows."""


class InputError(RaytopoError, ValueError):
    """An input array, image or file is not what an API expects."""

"""The errors that mean bad input (a config, a file, a model path), not a bug. Entry points print them
as one line and exit with code 2. They live here, apart from the code that raises them, so that an entry
point can catch them without importing torch."""

from __future__ import annotations


class ConfigError(ValueError):
    """A composed config that cannot run: the message names the key, the value and what is expected."""


class DataError(ValueError):
    """Malformed input: the message names the file, the line or field, and what was expected."""


class LLMNotFoundError(FileNotFoundError):
    """The configured model could not be found; the message says what was tried and how to fix it."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, LLMNotFoundError)

"""User-facing errors.

Anything a user can cause (a bad file, a wrong key, a missing dataset) raises a subclass of
:class:`RasaError` whose message is one paragraph naming the file/record/key and what was
expected. The CLI prints that paragraph and exits non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class RasaError(Exception):
    """An error caused by input that the user can fix; the message says how."""


class DataError(RasaError):
    """A data file is missing, malformed or inconsistent."""


class ConfigError(RasaError):
    """A configuration value or key is wrong."""


class ChecksumError(DataError):
    """A downloaded or local file does not have the expected sha256."""


def where(path: object, record: object | None = None, key: str | None = None) -> str:
    """Format a location for an error message: ``file.json, record 12, key 'captions'``."""
    parts = [str(path)]
    if record is not None:
        parts.append(f"record {record}")
    if key is not None:
        parts.append(f"key {key!r}")
    return ", ".join(parts)

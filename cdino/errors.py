"""Errors that reach the user as one clear line.

Every error a user can cause (bad files, bad configs, bad model folders) is a
:class:`CdinoError`. The command line prints ``error: <message>`` and exits with
status 2; the message always names the file, line or key at fault.
"""

from __future__ import annotations


class CdinoError(Exception):
    """Base class of all user-facing errors."""


class ConfigError(CdinoError):
    """A configuration file or value is invalid (unknown key, wrong type)."""


class DataError(CdinoError):
    """A data folder, list or trials file is malformed or inconsistent."""


class AudioError(DataError):
    """An audio file is missing, corrupt, empty, too short or of a refused format."""


class ModelFormatError(CdinoError):
    """A model folder or checkpoint cannot be loaded (version, missing or corrupt file)."""


class TrainingError(CdinoError):
    """A training run cannot go on (collapse, repeated non-finite losses)."""

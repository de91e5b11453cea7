"""The error a user can act on, shared by every layer (``exp3rt.config`` re-exports it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work, explained in one sentence."""

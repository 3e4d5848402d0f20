"""Domain errors: services raise these; the CLI and (later) the HTTP layer map them once."""

from __future__ import annotations


class RagtuneError(Exception):
    """Base of every error ragtune reports to a user; the message says what to do."""


class InvalidInput(RagtuneError):
    """The caller asked for something malformed or impossible."""


class NotFound(RagtuneError):
    """A named thing (collection, file, model) does not exist."""


class ConfigMismatch(RagtuneError):
    """Stored data was made with other settings than the ones in force."""


class MissingDependency(RagtuneError):
    """A model or package is not installed; the message says how to install it."""


class UpstreamUnavailable(RagtuneError):
    """A server ragtune depends on (Qdrant, vLLM) did not answer."""


class UpstreamRejected(RagtuneError):
    """A server ragtune depends on refused its credentials: an operator must fix the settings
    (retrying does not help)."""


class GateFailed(RagtuneError):
    """An eval-gated change (an alias flip with a required suite) was refused: a gate failed."""


class AdapterError(InvalidInput):
    """A LoRA adapter is unusable with this base model or backend (rank, modules, files)."""

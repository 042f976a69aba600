"""A small error hierarchy. The CLI turns every ``EdgeAgentError`` into one line and exit code 2."""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error the user can act on. The message says what is wrong and what to do."""


class InputError(EdgeAgentError):
    """The problem text or an option is unusable."""


class ModelError(EdgeAgentError):
    """The local model cannot be found, verified or loaded."""


class ContextError(EdgeAgentError):
    """The prompt does not fit the model's context window."""


class StoreError(EdgeAgentError):
    """The session database cannot be opened or used."""


class SessionError(EdgeAgentError):
    """A session id is unknown or the session is in the wrong state for the command."""

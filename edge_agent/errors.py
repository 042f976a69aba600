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


class ConfigError(EdgeAgentError):
    """The config file or a cloud option is invalid."""


class CloudError(EdgeAgentError):
    """A cloud call failed. ``kind`` says how; ``opens_breaker`` whether to stop trying for a while."""

    def __init__(self, message: str, kind: str = "error", *, opens_breaker: bool = False, billed: bool = False):
        super().__init__(message)
        self.kind = kind
        self.opens_breaker = opens_breaker
        self.billed = billed  # the request reached the provider and may have been charged


class BudgetDenied(EdgeAgentError):
    """A reservation would break a cap; the call is not made."""

    def __init__(self, message: str, scope: str, cap_usd: float, committed_usd: float, needed_usd: float):
        super().__init__(message)
        self.scope = scope
        self.cap_usd = cap_usd
        self.committed_usd = committed_usd
        self.needed_usd = needed_usd


# Every error a user can act on, whichever package raised it: the CLI, chat and serve turn exactly
# these into one line (exit 2, or an HTTP 4xx). Packages below edge_agent own their errors; they
# are gathered here, in the one place that translates them.
USER_ERRORS: tuple[type[BaseException], ...] = (EdgeAgentError,)

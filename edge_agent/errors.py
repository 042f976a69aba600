"""A small error hierarchy. The CLI turns every ``EdgeAgentError`` into one line and exit code 2."""

from __future__ import annotations

from cloud.errors import BudgetDenied, CloudError, ConfigError
from store.errors import SessionError, StoreError
from triggers.errors import PolicyError

__all__ = ["BudgetDenied", "CloudError", "ConfigError", "ContextError", "EdgeAgentError", "InputError", "ModelError",
           "PolicyError", "SessionError", "StoreError", "USER_ERRORS"]


class EdgeAgentError(Exception):
    """Base of every error the user can act on. The message says what is wrong and what to do."""


class InputError(EdgeAgentError):
    """The problem text or an option is unusable."""


class ModelError(EdgeAgentError):
    """The local model cannot be found, verified or loaded."""


class ContextError(EdgeAgentError):
    """The prompt does not fit the model's context window."""




# Every error a user can act on, whichever package raised it: the CLI, chat and serve turn exactly
# these into one line (exit 2, or an HTTP 4xx). Packages below edge_agent own their errors; they
# are gathered here, in the one place that translates them.
USER_ERRORS: tuple[type[BaseException], ...] = (EdgeAgentError, StoreError, SessionError, ConfigError, CloudError,
                                                BudgetDenied, PolicyError)

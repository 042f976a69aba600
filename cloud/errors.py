"""Errors of the cloud package: a failed call, a refused reservation, an unusable cloud setting."""

from __future__ import annotations


class ConfigError(Exception):
    """A cloud option or config value is invalid; the message says which and what to do."""


class CloudError(Exception):
    """A cloud call failed. ``kind`` says how; ``opens_breaker`` whether to stop trying for a while."""

    def __init__(self, message: str, kind: str = "error", *, opens_breaker: bool = False, billed: bool = False):
        super().__init__(message)
        self.kind = kind
        self.opens_breaker = opens_breaker
        self.billed = billed  # the request reached the provider and may have been charged
        self.detail = ""  # what the provider said, when it said something (an HTTP error's message)
        self.usage: dict | None = None  # a paid reply that could not be used: its usage as reported, to book it


class BudgetDenied(Exception):
    """A reservation would break a cap; the call is not made."""

    def __init__(self, message: str, scope: str, cap_usd: float, committed_usd: float, needed_usd: float):
        super().__init__(message)
        self.scope = scope
        self.cap_usd = cap_usd
        self.committed_usd = committed_usd
        self.needed_usd = needed_usd

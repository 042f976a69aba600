"""Errors of the triggers package."""


class PolicyError(ValueError):
    """A policy name or parameter is unusable; the message says which and what it takes."""

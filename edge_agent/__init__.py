"""edge-agent: local-first step-by-step reasoning with cloud escalation at the steps that need it."""

__version__ = "0.1.0"

"""Detectors and policies: pure functions of reasoning state and step signals. No model calls, no I/O."""

from .policies import POLICIES, LocalOnly, Policy, get_policy, parse_spec, split_specs

__all__ = ["POLICIES", "LocalOnly", "Policy", "get_policy", "parse_spec", "split_specs"]

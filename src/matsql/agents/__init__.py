"""Agents: prompt builder + output parser per agent; templates live in ``templates/*.yaml``."""

from matsql.agents import fixer, planner, selector, validator

__all__ = ["fixer", "planner", "selector", "validator"]

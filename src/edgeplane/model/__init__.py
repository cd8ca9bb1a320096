"""The configuration model shared by every role: typed objects, validation, YAML/JSON."""

from .config import Application, Config, Rule, Upstream
from .load import ConfigError, Problem, dump, load, parse

__all__ = ["Application", "Config", "ConfigError", "Problem", "Rule", "Upstream", "dump", "load", "parse"]

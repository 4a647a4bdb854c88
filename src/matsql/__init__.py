"""matsql: multi-agent text-to-SQL research toolkit."""

__version__ = "0.1.0"

"""The error every config check raises."""


class ConfigError(ValueError):
    """A config or command-line value that cannot be used; the message says how to fix it."""

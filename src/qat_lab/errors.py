"""Errors that the CLI turns into one clear line and a non-zero exit."""


class ConfigError(ValueError):
    """A bad configuration value, named with the override that would fix it."""


class DataError(ValueError):
    """A corpus that cannot be read (missing path, empty files)."""


class RunRecordError(ValueError):
    """A run record that cannot be parsed or does not follow the schema."""

"""Exceptions. Every error a user can cause is an :class:`AdvarenaError`; the CLI prints
its message on one line and exits with status 2."""


class AdvarenaError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class PluginError(AdvarenaError):
    """A plugin could not be loaded or registered (duplicate name, bad declaration)."""


class UnknownPluginError(AdvarenaError):
    """A name that no registered plugin has."""


class ParameterError(AdvarenaError):
    """A plugin parameter with an unknown name, a wrong type or a value out of range."""


class ThreatModelViolation(AdvarenaError):
    """An attack returned outputs that break its declared threat model."""


class DataError(AdvarenaError):
    """A dataset is missing or unreadable."""


class SuiteError(AdvarenaError):
    """A suite file that cannot be read or does not validate."""


class StoreError(AdvarenaError):
    """The result store cannot be opened or is from an incompatible schema."""

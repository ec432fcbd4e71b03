"""The package version, kept apart so every module can read it without cycles."""

__version__ = "0.1.0"

#: Bumped whenever the layout of stored plans or keys changes: older rows are then
#: never read (the version is part of every key and of every stored record).
CACHE_FORMAT = 2

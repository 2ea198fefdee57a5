"""syncengine: declarative, change-tracking sync between business systems."""

__version__ = "0.1.0"

"""The built-in adapters. Each module registers its adapters with decorators when imported.

The core never imports this package; the program's entry points (``engine.cli`` and
``engine.api``) call :func:`register_builtins`.
"""

from __future__ import annotations

from engine.registry import REGISTRY, Registry

BUILTIN: tuple[str, ...] = (
    "engine.adapters.autofy",
    "engine.adapters.aljex_live",
    "engine.adapters.csv_file",
    "engine.adapters.dsync",
    "engine.adapters.dsync_connector",
    "engine.adapters.http_post",
    "engine.adapters.isync",
    "engine.adapters.jsonl_file",
    "engine.adapters.weavy",
    "engine.adapters.weavy_destination",
    "engine.adapters.sftp",
    "engine.adapters.sftp_destination",
    "engine.adapters.sqlite_db",
)


def register_builtins(registry: Registry = REGISTRY) -> Registry:
    """Register the built-in adapters and those of installed plugins."""
    registry.load_modules(BUILTIN)
    registry.load_entry_points()
    return registry

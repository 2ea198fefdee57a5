"""Where adapters are registered: a decorator that fills a plain dict, and an entry-point group.

Built-in adapters are listed in ``engine.adapters.BUILTIN`` and registered by the program's entry
points (the CLI and ``engine.api``); third-party packages add theirs through the
``syncengine.adapters`` entry-point group, whose value is a module (imported for its decorators)
or a callable taking the :class:`Registry`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal

from engine.errors import ConfigError
from engine.typed_config import schema_of, secret_fields

Role = Literal["source", "destination", "receiver"]
ROLES: tuple[Role, ...] = ("source", "destination", "receiver")
ENTRY_POINT_GROUP = "syncengine.adapters"


@dataclass(frozen=True)
class EmptyOptions:
    """This adapter takes no per-sync options."""


@dataclass(frozen=True)
class AdapterSpec:
    """One registered adapter in one role."""

    name: str
    role: Role
    summary: str
    factory: Callable[..., Any]
    config_type: type
    options_type: type
    module: str

    @property
    def config_schema(self) -> dict[str, Any]:
        """The JSON Schema of the adapter's block under ``sources``/``destinations``."""
        return schema_of(self.config_type, title=f"{self.name} {self.role}", description=self.summary)

    @property
    def options_schema(self) -> dict[str, Any]:
        """The JSON Schema of the per-sync options under ``syncs.<name>.source``/``destination``."""
        return schema_of(self.options_type, title=f"{self.name} {self.role} options")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Config fields that hold secrets."""
        return secret_fields(self.config_type)


@dataclass
class Registry:
    """Adapters by role and name."""

    adapters: dict[Role, dict[str, AdapterSpec]] = field(
        default_factory=lambda: {role: {} for role in ROLES})
    _loaded_entry_points: bool = False

    def register(self, role: Role, name: str, *, config: type, options: type = EmptyOptions,
                 summary: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``factory(config, adapter_context)`` builds the adapter for one pipeline block."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            doc = summary or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            spec = AdapterSpec(name, role, doc, factory, config, options, factory.__module__)
            existing = self.adapters[role].get(name)
            if existing is not None and existing.module != spec.module:
                raise ValueError(f"{role} adapter '{name}' is registered twice "
                                 f"({existing.module} and {spec.module})")
            self.adapters[role][name] = spec
            return factory

        return decorate

    def source(self, name: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a pull source."""
        return self.register("source", name, **kw)

    def destination(self, name: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a destination."""
        return self.register("destination", name, **kw)

    def receiver(self, name: str, **kw: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a push source (served by ``syncengine serve``)."""
        return self.register("receiver", name, **kw)

    def get(self, role: Role, name: str) -> AdapterSpec | None:
        """The adapter, or ``None``."""
        return self.adapters[role].get(name)

    def names(self, role: Role) -> list[str]:
        """Registered names in one role, sorted."""
        return sorted(self.adapters[role])

    def load_modules(self, modules: tuple[str, ...]) -> None:
        """Import modules whose decorators register adapters."""
        for module in modules:
            importlib.import_module(module)

    def load_entry_points(self) -> None:
        """Load third-party adapters from the ``syncengine.adapters`` entry-point group, once."""
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
                if callable(loaded):
                    loaded(self)
            except Exception as exc:
                # A broken plugin is named, not a traceback (and not silently skipped).
                raise ConfigError(f"the adapter plugin '{ep.name}' ({ep.value}) failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc


REGISTRY = Registry()
"""The process-wide registry that ``engine.adapters`` modules register into."""

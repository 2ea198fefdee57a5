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
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from engine.errors import ConfigError
from engine.interfaces import Destination, PushSource, Source
from engine.typed_config import schema_of, secret_fields

ConfigT = TypeVar("ConfigT")
OptionsT = TypeVar("OptionsT")
SourceFactory = Callable[[ConfigT, Path], Source[OptionsT]]
DestinationFactory = Callable[[ConfigT, Path], Destination[OptionsT]]
ReceiverFactory = Callable[[ConfigT, Path], PushSource[OptionsT]]

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
    factory: Callable[[Any, Path], object]
    """Makes the adapter from its config (an instance of ``config_type``) and the pipeline's folder."""
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
                 summary: str = "") -> Callable[[Callable[..., object]], Callable[..., object]]:
        """Decorator: ``factory(config, base_dir)`` builds the adapter for one pipeline block (untyped form)."""

        def decorate(factory: Callable[..., object]) -> Callable[..., object]:
            doc = summary or next(iter((factory.__doc__ or "").strip().splitlines()), "")
            spec = AdapterSpec(name, role, doc, factory, config, options, factory.__module__)
            existing = self.adapters[role].get(name)
            if existing is not None and existing.module != spec.module:
                raise ValueError(f"{role} adapter '{name}' is registered twice "
                                 f"({existing.module} and {spec.module})")
            self.adapters[role][name] = spec
            return factory

        return decorate

    # The typed forms: mypy checks that the decorated class takes (config, base_dir) and that its
    # instances keep the role's protocol with exactly the declared options type.

    def source(self, name: str, *, config: type[ConfigT],
               options: type[OptionsT] = EmptyOptions,  # type: ignore[assignment]  # no per-sync options
               summary: str = "") -> Callable[[SourceFactory[ConfigT, OptionsT]], SourceFactory[ConfigT, OptionsT]]:
        """Register a pull source."""
        return cast("Callable[[SourceFactory[ConfigT, OptionsT]], SourceFactory[ConfigT, OptionsT]]",
                    self.register("source", name, config=config, options=options, summary=summary))

    def destination(self, name: str, *, config: type[ConfigT],
                    options: type[OptionsT] = EmptyOptions,  # type: ignore[assignment]  # no per-sync options
                    summary: str = ""
                    ) -> Callable[[DestinationFactory[ConfigT, OptionsT]], DestinationFactory[ConfigT, OptionsT]]:
        """Register a destination."""
        return cast("Callable[[DestinationFactory[ConfigT, OptionsT]], DestinationFactory[ConfigT, OptionsT]]",
                    self.register("destination", name, config=config, options=options, summary=summary))

    def receiver(self, name: str, *, config: type[ConfigT],
                 options: type[OptionsT] = EmptyOptions,  # type: ignore[assignment]  # no per-sync options
                 summary: str = ""
                 ) -> Callable[[ReceiverFactory[ConfigT, OptionsT]], ReceiverFactory[ConfigT, OptionsT]]:
        """Register a push source (served by ``syncengine serve``)."""
        return cast("Callable[[ReceiverFactory[ConfigT, OptionsT]], ReceiverFactory[ConfigT, OptionsT]]",
                    self.register("receiver", name, config=config, options=options, summary=summary))

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

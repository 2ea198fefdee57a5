"""The adapter boundary is typed: no ``Any`` where contributors plug in, and mypy holds an adapter to its options."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from engine import interfaces, registry

BOUNDARY = ("Source", "Destination", "PushSource", "Discoverable", "SourceStream", "DestinationStream",
            "StreamingDestinationStream", "Acknowledging", "WholeRead")


def _methods(protocol: type) -> dict[str, object]:
    return {name: member for name, member in vars(protocol).items()
            if callable(member) and not name.startswith("_")}


@pytest.mark.parametrize("name", BOUNDARY)
def test_no_boundary_signature_is_any(name: str) -> None:
    protocol = getattr(interfaces, name)
    assert typing.Protocol in protocol.__mro__ or getattr(protocol, "_is_protocol", False)
    for method_name, method in _methods(protocol).items():
        hints = typing.get_type_hints(method, vars(interfaces))
        for parameter, hint in hints.items():
            assert hint is not typing.Any, f"{name}.{method_name}: {parameter} is Any"
            if parameter == "options":
                # Options are the adapter's own dataclass, not anything.
                assert hint is interfaces.OptionsT_contra, f"{name}.{method_name}: options is {hint}"


def test_the_registry_decorators_carry_config_and_options_types() -> None:
    for role in ("source", "destination", "receiver"):
        signature = inspect.signature(getattr(registry.Registry, role))
        hints = typing.get_type_hints(getattr(registry.Registry, role), vars(registry))
        assert set(signature.parameters) == {"self", "name", "config", "options", "summary"}
        assert hints["config"] == type[registry.ConfigT] and hints["options"] == type[registry.OptionsT]


BAD_ADAPTER = '''
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.interfaces import StreamContext
from engine.registry import Registry

REGISTRY = Registry()


@dataclass(frozen=True)
class Config:
    """Config."""


@dataclass(frozen=True)
class Options:
    """The options it registers with."""


@dataclass(frozen=True)
class Other:
    """Options of some other adapter."""


@REGISTRY.destination("bad", config=Config, options=Options)
class Bad:
    """Its open_stream takes the wrong options type and returns no stream."""

    def __init__(self, config: Config, base_dir: Path) -> None:
        self.config = config

    def open_stream(self, options: Other, ctx: StreamContext) -> None:
        return None

    def close(self) -> None:
        pass
'''


def test_mypy_holds_a_registered_adapter_to_its_options_and_protocol(tmp_path: Path) -> None:
    module = tmp_path / "bad_adapter.py"
    module.write_text(BAD_ADAPTER, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent",
                             str(module)], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Argument 1 has incompatible type "type[Bad]"' in result.stdout, result.stdout
    assert 'Destination[Options]' in result.stdout, result.stdout

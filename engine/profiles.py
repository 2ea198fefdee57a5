"""Profiles: one pipeline file as a template, instantiated once per tenant.

A profiles file (``profiles.yml`` beside the pipeline, or the pipeline's ``profiles:`` key) names
the instances. Each has its own ``vars`` (over the pipeline's), the environment variables that
hold its secrets (``env: {WEAVY_PASSWORD: ACME_WEAVY_PASSWORD}``: the pipeline's
``env.WEAVY_PASSWORD`` reads ``ACME_WEAVY_PASSWORD`` for this profile; secrets themselves never sit
in the file), its schedule, and its own state: the pipeline runs under the name
``<pipeline>@<profile>``, so cursors, hashes, dead letters and history of 200 tenants share one
state file and never meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import PipelineInvalid, Problem
from engine.schema_errors import did_you_mean, validate_block
from engine.yaml_source import load_located

PROFILES_FILE = "profiles.yml"
SEPARATOR = "@"
"""Between the pipeline's name and a profile's, in the state store (``orders@acme``)."""


@dataclass(frozen=True)
class Profile:
    """One instance of a pipeline."""

    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    schedule: dict[str, Any] | None = None
    group_schedules: dict[str, dict[str, Any]] = field(default_factory=dict)
    enabled: bool = True
    location: str = ""
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Values ``env.NAME`` gives this profile directly (a profile made through the control API, whose
    credentials are kept encrypted and decrypted only for its runs); never written anywhere."""


def profiles_path(pipeline_file: Path, data: Any) -> Path | None:
    """The profiles file of a pipeline: its ``profiles:`` key, else ``profiles.yml`` beside it when it exists."""
    named = data.get("profiles") if isinstance(data, dict) else None
    if isinstance(named, str):
        return pipeline_file.resolve().parent / named
    default = pipeline_file.resolve().parent / PROFILES_FILE
    return default if default.is_file() else None


def load_profiles(path: Path, display: str | None = None) -> dict[str, Profile]:
    """The profiles of a file, validated; raises :class:`PipelineInvalid` with every located problem."""
    from engine.config import load_schema  # late: config imports this module

    shown = display or str(path)
    if not path.is_file():
        raise PipelineInvalid([Problem(shown, 1, 1, "", "no such profiles file")])
    located = load_located(path, shown)
    problems = validate_block(load_schema("profiles.schema.json"), located.data, located)
    if problems:
        raise PipelineInvalid(problems)
    out = {}
    for name, block in located.data["profiles"].items():
        line, _ = located.where(("profiles", name), key=True)
        out[name] = Profile(name, dict(block.get("vars") or {}), dict(block.get("env") or {}),
                            block.get("schedule"),
                            {g: v["schedule"] for g, v in (block.get("groups") or {}).items() if "schedule" in v},
                            bool(block.get("enabled", True)), f"{shown}:{line}")
    return out


def find_profile(profiles: dict[str, Profile], name: str, file: str) -> Profile:
    """A profile by name; an unknown one is a configuration error with a did-you-mean, located in ``file``."""
    if name in profiles:
        return profiles[name]
    problem = f"unknown profile '{name}'{did_you_mean(name, list(profiles))}; the profiles are: {', '.join(profiles)}"
    raise PipelineInvalid([Problem(file, 1, 1, "profiles", problem)])

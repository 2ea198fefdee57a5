"""Write ``schemas/adapters/*.json`` from the adapters' own config dataclasses (run after changing one)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.adapters import BUILTIN
from engine.registry import REGISTRY
from engine.schema_export import adapter_exports

TARGET = Path(__file__).resolve().parents[1] / "schemas" / "adapters"


def render(document: dict[str, object]) -> str:
    """The exact text of one exported schema file."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Rewrite the export; stale files of removed adapters are deleted."""
    REGISTRY.load_modules(BUILTIN)
    exports = adapter_exports(REGISTRY, BUILTIN)
    TARGET.mkdir(parents=True, exist_ok=True)
    for stale in set(p.name for p in TARGET.glob("*.json")) - set(exports):
        (TARGET / stale).unlink()
    for name, document in exports.items():
        (TARGET / name).write_text(render(document), encoding="utf-8")
    print(f"wrote {len(exports)} adapter schemas to schemas/adapters/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

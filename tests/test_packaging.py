"""The built package works on its own: a wheel, unpacked away from the source tree, runs the quick start.

The rest of the suite runs against however the project is installed (editable in CI); this test
makes sure a non-editable install ships what the engine reads at run time (schemas, shipped
mappings, scaffolds) and needs nothing from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_a_wheel_alone_validates_the_samples_and_runs_the_quick_start(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("syncengine-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("engine/schemas/pipeline.schema.json", "engine/schemas/mapping.schema.json",
                    "engine/mappings/customers.yml", "engine/scaffolds/files/pipeline.yml"):
        assert shipped in names, shipped
    assert not any(n.startswith(("tests/", "samples/", "benchmarks/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    shutil.copytree(REPO / "samples", work / "samples", ignore=shutil.ignore_patterns("out", ".syncengine"))
    # The unpacked wheel comes first on the path, and the checkout is nowhere on it.
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                              timeout=120, cwd=work, env=env)

    where = subprocess.run([sys.executable, "-c", "import engine; print(engine.__file__)"], capture_output=True,
                           text=True, cwd=work, env=env, timeout=60)
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    applied = run("apply", "samples/quickstart/pipeline.yml")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "customers: 5 creates, 0 updates, 0 deletes, 0 errors" in applied.stdout
    for pipeline in sorted((work / "samples").rglob("pipeline.yml")):
        checked = run("validate", str(pipeline.relative_to(work)))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    made = run("init", "files", "--dir", "scaffolded")
    assert made.returncode == 0, made.stdout + made.stderr
    ran = run("apply", "scaffolded/pipeline.yml")
    assert ran.returncode == 0, ran.stdout + ran.stderr

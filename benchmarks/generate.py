"""A deterministic, seeded generator of a freight ``loads`` export and its day-2 successor.

Day 1 holds ``rows`` loads. Day 2 is day 1 with exactly 1 % of the rows changed (each change alters a
mapped field and ``updated_at``), 0.1 % removed and 0.1 % added at the end. The ids of each kind are
written to a manifest beside the files, so a test can check the engine's counts against the truth.

    python -m benchmarks.generate --rows 100000 --out benchmarks/data
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

COLUMNS = ("id", "customer_id", "carrier_id", "status", "origin_city", "origin_state", "dest_city",
           "dest_state", "ship_date", "delivery_date", "amount", "weight", "updated_at")
STATUSES = ("tendered", "booked", "in_transit", "delivered", "invoiced", "cancelled")
DELIVERED = frozenset(("delivered", "invoiced"))
CITIES = (
    ("Dallas", "TX"), ("Houston", "TX"), ("El Paso", "TX"), ("Atlanta", "GA"), ("Savannah", "GA"),
    ("Chicago", "IL"), ("Joliet", "IL"), ("Memphis", "TN"), ("Nashville", "TN"), ("Columbus", "OH"),
    ("Cincinnati", "OH"), ("Indianapolis", "IN"), ("Louisville", "KY"), ("Kansas City", "MO"),
    ("St. Louis", "MO"), ("Denver", "CO"), ("Phoenix", "AZ"), ("Los Angeles", "CA"), ("Fresno", "CA"),
    ("Oakland", "CA"), ("Portland", "OR"), ("Seattle", "WA"), ("Salt Lake City", "UT"), ("Reno", "NV"),
    ("Charlotte", "NC"), ("Winston-Salem", "NC"), ("Jacksonville", "FL"), ("Miami", "FL"),
    ("Newark", "NJ"), ("Allentown", "PA"), ("Harrisburg", "PA"), ("Laredo", "TX"), ("Omaha", "NE"),
    ("Minneapolis", "MN"), ("Detroit", "MI"), ("Buffalo", "NY"),
)
START = date(2025, 1, 1)
SEED = 20250101


@dataclass(frozen=True)
class Dataset:
    """The files of one generated size and what day 2 changed."""

    rows: int
    day1: Path
    day2: Path
    changed: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]

    @property
    def day2_rows(self) -> int:
        """Rows in the day-2 file."""
        return self.rows - len(self.removed) + len(self.added)


def _state_case(rng: random.Random, code: str) -> str:
    # Exports mix the case of state codes; the mapping must normalise it.
    pick = rng.random()
    return code.lower() if pick < 0.25 else code.title() if pick < 0.4 else code


def _stamp(day: date, rng: random.Random) -> str:
    moment = datetime(day.year, day.month, day.day) + timedelta(seconds=rng.randrange(86400))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_row(rng: random.Random, number: int) -> list[str]:
    """One load, drawn from ``rng``."""
    origin, dest = rng.choice(CITIES), rng.choice(CITIES)
    status = STATUSES[rng.randrange(len(STATUSES))]
    ship = START + timedelta(days=rng.randrange(330))
    delivered = ship + timedelta(days=1 + rng.randrange(6)) if status in DELIVERED else None
    amount = rng.randrange(15000, 900000)
    return [f"L{number:07d}", f"C{rng.randrange(1, 20000):05d}", f"K{rng.randrange(1, 3000):04d}", status,
            origin[0], _state_case(rng, origin[1]), dest[0], _state_case(rng, dest[1]), ship.isoformat(),
            delivered.isoformat() if delivered else "", f"{amount // 100}.{amount % 100:02d}",
            str(rng.randrange(500, 45000)), _stamp(delivered or ship, rng)]


def change_row(rng: random.Random, row: list[str]) -> list[str]:
    """The same load a day later: a new status (delivery date with it) or amount, and a new ``updated_at``."""
    out = list(row)
    if rng.random() < 0.5:
        choices = [s for s in STATUSES if s != row[3]]
        out[3] = choices[rng.randrange(len(choices))]
        if out[3] in DELIVERED and not out[9]:
            out[9] = (date.fromisoformat(out[8]) + timedelta(days=2)).isoformat()
        elif out[3] not in DELIVERED:
            out[9] = ""
    else:
        cents = int(row[10].replace(".", "")) + 1 + rng.randrange(5000)
        out[10] = f"{cents // 100}.{cents % 100:02d}"
    out[12] = "2025-12-01T06:00:00Z"
    return out


def _write(path: Path, rows: list[list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    tmp.replace(path)


def _paths(rows: int, out: Path) -> tuple[Path, Path, Path]:
    stem = out / f"loads_{rows}"
    return Path(f"{stem}_day1.csv"), Path(f"{stem}_day2.csv"), Path(f"{stem}.json")


def load(rows: int, out: Path, seed: int = SEED) -> Dataset | None:
    """The files of this size and seed when they were generated already (reads the manifest only)."""
    day1, day2, manifest = _paths(rows, out)
    if day1.is_file() and day2.is_file() and manifest.is_file():
        data = json.loads(manifest.read_text(encoding="utf-8"))
        if data.get("seed") == seed:
            return Dataset(rows, day1, day2, tuple(data["changed"]), tuple(data["added"]), tuple(data["removed"]))
    return None


def generate_apart(rows: int, out: Path, seed: int = SEED) -> Dataset:
    """Like ``generate``, the generating done in a process of its own.

    Generating holds the whole table in memory (hundreds of MB at 1M rows); the benchmark's driver
    must not grow by that, since its children's ``ru_maxrss`` starts from the driver's.
    """
    found = load(rows, out, seed)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "benchmarks.generate", "--rows", str(rows), "--out", str(out), "--seed", str(seed)]
    subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=True, timeout=3600,
                   stdout=subprocess.DEVNULL)
    found = load(rows, out, seed)
    if found is None:
        raise RuntimeError(f"the generator wrote no {rows}-row files into {out}")
    return found


def generate(rows: int, out: Path, seed: int = SEED) -> Dataset:
    """Write ``loads_<rows>_day1.csv`` and ``_day2.csv`` and their manifest, unless already there."""
    out.mkdir(parents=True, exist_ok=True)
    day1, day2, manifest = _paths(rows, out)
    found = load(rows, out, seed)
    if found is not None:
        return found
    rng = random.Random(seed)
    table = [make_row(rng, n) for n in range(1, rows + 1)]
    # 1 % changed, 0.1 % removed, 0.1 % added: disjoint sets drawn from a second seeded stream.
    picker = random.Random(seed + 1)
    n_changed, n_removed, n_added = rows // 100, rows // 1000, rows // 1000
    picked = picker.sample(range(rows), n_changed + n_removed)
    changed_at = sorted(picked[:n_changed])
    removed_at = set(picked[n_changed:])
    day2_table = list(table)
    for i in changed_at:
        day2_table[i] = change_row(picker, table[i])
    day2_table = [r for i, r in enumerate(day2_table) if i not in removed_at]
    added = [make_row(picker, rows + n) for n in range(1, n_added + 1)]
    day2_table.extend(added)
    _write(day1, table)
    _write(day2, day2_table)
    dataset = Dataset(rows, day1, day2, tuple(table[i][0] for i in changed_at), tuple(r[0] for r in added),
                      tuple(table[i][0] for i in sorted(removed_at)))
    manifest.write_text(json.dumps({"seed": seed, "rows": rows, "changed": dataset.changed,
                                    "added": dataset.added, "removed": dataset.removed}), encoding="utf-8")
    return dataset


def main() -> None:
    """Command line: generate the files of one or more sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000", help="comma-separated sizes, e.g. 100000,1000000")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    for size in (int(s) for s in args.rows.split(",")):
        data = generate(size, Path(args.out), args.seed)
        print(f"{data.day1} ({data.rows} rows), {data.day2} ({data.day2_rows} rows): "
              f"{len(data.changed)} changed, {len(data.added)} added, {len(data.removed)} removed")


if __name__ == "__main__":
    main()

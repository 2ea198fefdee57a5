"""The benchmark's Markdown report: the tables, the targets, the machine; and its place in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"
# engine/floor, in the process, at the largest size (the issue's targets; T1's is the row path's),
# reported for both engine kinds: the engine as it runs by default and the engine on its row path.
RATIO_TARGETS = {"T1": 1.2, "T2": 0.8, "T3": 1.0}
ARROW_TARGET = 1.0  # T1, engine/dlt's Arrow path, with the engine's arrow extra installed
RSS_TARGET_MB = 150.0
RSS_GROWTH_TARGET = 1.2
HTTP_TARGET = 2000.0
NAMES = {"engine": "engine", "engine_rows": "engine, row path", "floor": "floor", "shell": "sqlite3 shell",
         "dlt": "dlt Arrow"}
PATH_NAMES = {"arrow": "Arrow read", "row": "row path"}
ENGINES = ("engine", "engine_rows")
PEERS = ("shell", "dlt")
KINDS = ("engine", "engine_rows", "floor", *PEERS)


def _mb(value: float) -> str:
    return f"{value:.0f} MB"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _times(cell: dict[str, Any] | None) -> str:
    return f"{cell['seconds']:.3f} / {cell['whole_seconds']:.3f}" if cell else "not measured"


def _ratio(row: dict[str, Any], peer: str, kind: str = "engine") -> str:
    found = row.get("ratios" if kind == "engine" else "ratios_rows", {}).get(peer)
    return f"{found['in_process']:.2f}x / {found['whole']:.2f}x" if found else "not measured"


def engine_label(summaries: list[dict[str, Any]]) -> str:
    """The default engine's name with the path it took, e.g. ``engine (Arrow read)``."""
    paths = sorted({str(r["engine"].get("path", "row")) for r in summaries if "engine" in r})
    if not paths:
        return NAMES["engine"]
    return f"{NAMES['engine']} ({' / '.join(PATH_NAMES.get(p, p) for p in paths)})"


def _names(summaries: list[dict[str, Any]]) -> dict[str, str]:
    """Every kind's column name, the default engine's with its path."""
    return {**NAMES, "engine": engine_label(summaries)}


def _written(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "not measured"
    return "0 (files identical)" if not cell["dest_changed"] else f"{cell['dest_bytes']:,} B (changed)"


def table(summaries: list[dict[str, Any]]) -> list[str]:
    """Times: one row per size and task, every job in the process and whole, and both engines' ratios."""
    names = _names(summaries)
    head = " | ".join(f"{names[k]} s (in-process / whole)" for k in KINDS)
    lines = [f"| rows | task | {head} | engine/floor | {NAMES['engine_rows']}/floor | engine/sqlite3 shell | "
             "engine/dlt Arrow |",
             "|---:|---|" + "---:|" * (len(KINDS) + 4)]
    for row in summaries:
        cells = " | ".join(_times(row.get(k)) for k in KINDS)
        lines.append(f"| {row['rows']:,} | {row['task']} | {cells} | {_ratio(row, 'floor')} | "
                     f"{_ratio(row, 'floor', 'engine_rows')} | {_ratio(row, 'shell')} | {_ratio(row, 'dlt')} |")
    return lines


def memory_table(summaries: list[dict[str, Any]]) -> list[str]:
    """Peak RSS, records/s and what T2 wrote to each destination."""
    names = _names(summaries)
    rates = (*ENGINES, "floor")
    lines = ["| rows | task | " + " | ".join(f"{names[k]} peak RSS" for k in KINDS) + " | "
             + " | ".join(f"{names[k]} rec/s" for k in rates) + " | destination written in T2 ("
             + "; ".join(names[k] for k in KINDS) + ") |",
             "|---:|---|" + "---:|" * (len(KINDS) + len(rates)) + "---|"]
    for row in summaries:
        rss = " | ".join(_mb(row[k]["maxrss_mb"]) if k in row else "not measured" for k in KINDS)
        per_second = " | ".join(_rate(row[k]["per_second"]) if k in row else "not measured" for k in rates)
        written = "; ".join(_written(row.get(k)) for k in KINDS) if row["task"] == "T2" else ""
        lines.append(f"| {row['rows']:,} | {row['task']} | {rss} | {per_second} | {written} |")
    return lines


def peer_lines(peers: dict[str, dict[str, Any]] | None) -> list[str]:
    """What the engine's row-path arm and each peer were (program, versions), or why they were not measured."""
    out = []
    rows_arm = (peers or {}).get("engine_rows")
    if rows_arm is not None and rows_arm["status"] == "ok":
        out.append(f"- {NAMES['engine_rows']}: the same pipeline with `arrow: false` (rows read by Python's csv "
                   f"module), beside the engine's default run (pyarrow {rows_arm.get('pyarrow', 'unknown')} "
                   f"installed)")
    elif rows_arm is not None:
        out.append(f"- {NAMES['engine_rows']}: not measured: {str(rows_arm.get('reason', rows_arm['status']))[:300]}")
    for name in PEERS:
        peer = (peers or {}).get(name, {"status": "skipped", "reason": "not asked for"})
        if peer["status"] == "ok" and name == "shell":
            out.append(f"- sqlite3 shell: `{peer['binary']}`, SQLite {peer['version']}")
        elif peer["status"] == "ok":
            versions = ", ".join(f"{k} {v}" for k, v in peer["versions"].items())
            out.append(f"- dlt Arrow: {versions}, in `benchmarks/work/peers-venv`")
        else:
            out.append(f"- {NAMES[name]}: not measured: {str(peer.get('reason', peer['status']))[:300]}")
    return out


def _target_name(summaries: list[dict[str, Any]], kind: str) -> str:
    """How a target line names an engine kind: the default engine with its path, or the row-path arm."""
    return engine_label(summaries) if kind == "engine" else "engine (row path, `arrow: false`)"


def _path(cell: dict[str, Any]) -> str:
    return PATH_NAMES.get(str(cell.get("path", "row")), str(cell.get("path")))


def _ratio_targets(summaries: list[dict[str, Any]], kind: str) -> list[str]:
    """T1, T2 and T3 against the floor at the largest size, for one engine kind, each met or not."""
    out: list[str] = []
    largest = max(r["rows"] for r in summaries)
    at_largest = {r["task"]: r for r in summaries if r["rows"] == largest}
    ratios = "ratios" if kind == "engine" else "ratios_rows"
    for task, limit in RATIO_TARGETS.items():
        row = at_largest.get(task)
        if row is None or kind not in row:
            continue
        ratio, whole = row[ratios]["floor"]["in_process"], row[ratios]["floor"]["whole"]
        out.append(f"- {task} at {largest:,} rows: {_target_name(summaries, kind)}/floor {ratio:.2f}x in the process "
                   f"({whole:.2f}x whole process) (target <= {limit}x, {_path(row[kind])}): "
                   f"{'met' if ratio <= limit else 'NOT met'}")
    return out


def _memory_targets(summaries: list[dict[str, Any]], kind: str) -> list[str]:
    """Peak RSS and its growth from the smallest to the largest size, for one engine kind."""
    measured = [r for r in summaries if kind in r]
    if not measured:
        return []
    name = _target_name(summaries, kind)
    largest = max(r["rows"] for r in measured)
    smallest = min(r["rows"] for r in measured)
    peak = max(r[kind]["maxrss_mb"] for r in measured)
    out = [f"- {name} peak RSS {peak:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB): "
           f"{'met' if peak <= RSS_TARGET_MB else 'NOT met'}"]
    if largest != smallest:
        big = max(r[kind]["maxrss_mb"] for r in measured if r["rows"] == largest)
        small = max(r[kind]["maxrss_mb"] for r in measured if r["rows"] == smallest)
        growth = big / small
        out.append(f"- {name} peak RSS at {largest:,} / at {smallest:,}: {growth:.2f}x "
                   f"(target <= {RSS_GROWTH_TARGET}x): {'met' if growth <= RSS_GROWTH_TARGET else 'NOT met'}")
    else:
        out.append(f"- {name} peak RSS growth to 1M rows (target <= {RSS_GROWTH_TARGET}x): not measured "
                   f"(one size only)")
    return out


def targets(summaries: list[dict[str, Any]], http: dict[str, Any] | None, problems: list[str],
            peers: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Each target of the issue, met or not, with the figure that decides it.

    The T1/T2/T3-against-the-floor and memory targets are given for the engine as it ran by default
    (its path named) and for the engine on its row path; T1 against dlt's Arrow path for the default
    engine when it took the Arrow read.
    """
    out: list[str] = []
    if not summaries:
        return out
    largest = max(r["rows"] for r in summaries)
    engines = [k for k in ENGINES if any(k in r for r in summaries)]
    out += _ratio_targets(summaries, "engine")
    if "engine_rows" in engines:
        out += _ratio_targets(summaries, "engine_rows")
    else:
        reason = (peers or {}).get("engine_rows", {}).get("reason", "not run")
        out.append(f"- T1/T2/T3 of the engine on the row path (`arrow: false`) beside its default run: "
                   f"not measured: {str(reason)[:200]}")
    t1 = {r["task"]: r for r in summaries if r["rows"] == largest}.get("T1")
    arrow = t1 is not None and "arrow" in str(t1["engine"].get("path", "row")).lower()
    if not arrow:
        out.append(f"- T1 at {largest:,} rows: engine/dlt's Arrow path (target <= {ARROW_TARGET}x with the arrow "
                   f"extra installed): not measured: the engine's default run took the row path, not its Arrow "
                   f"read (it needs pyarrow)")
    elif t1 is not None and "dlt" in t1:
        ratio = t1["ratios"]["dlt"]["in_process"]
        out.append(f"- T1 at {largest:,} rows: {engine_label(summaries)}/dlt's Arrow path {ratio:.2f}x in the "
                   f"process ({t1['ratios']['dlt']['whole']:.2f}x whole process) (target <= {ARROW_TARGET}x, "
                   f"Arrow read): {'met' if ratio <= ARROW_TARGET else 'NOT met'}")
    else:
        reason = (peers or {}).get("dlt", {}).get("reason", "the dlt peer did not run")
        out.append(f"- T1 at {largest:,} rows: engine/dlt's Arrow path (target <= {ARROW_TARGET}x): "
                   f"not measured: {str(reason)[:200]}")
    names = ", ".join(_target_name(summaries, k) for k in engines)
    t2_clean = all(not r[k]["dest_changed"] for r in summaries if r["task"] == "T2" for k in engines if k in r)
    out.append(f"- T2 writes nothing to the destination database ({names}): {'met' if t2_clean else 'NOT met'}")
    counts_ok = not [p for p in problems if "counts" in p]
    out.append(f"- T1/T2/T3 counts equal the generator's (T3: changed, added, removed; {names}, floor, sqlite3 "
               f"shell): {'met' if counts_ok else 'NOT met'}")
    rows_ok = not [p for p in problems if "rows differ" in p]
    out.append(f"- T3 changed exactly the generator's changed, added and removed rows in the destination (by id; "
               f"{names}, sqlite3 shell): {'met' if rows_ok else 'NOT met'}")
    for kind in engines:
        same = not [p for p in problems if f"{kind}'s table differs from the floor" in p]
        out.append(f"- {_target_name(summaries, kind)}'s table equals the floor's after T3: "
                   f"{'met' if same else 'NOT met'}")
    if "engine_rows" in engines:
        wrong = [p for p in problems if "not the row path" in p]
        out.append(f"- {_target_name(summaries, 'engine_rows')} said it took the row path in every run: "
                   f"{'NOT met' if wrong else 'met'}")
    measured = {k for r in summaries for k in PEERS if k in r}
    if "shell" in measured:
        same = not [p for p in problems if "shell's table differs from the floor" in p]
        out.append(f"- sqlite3 shell's table equals the floor's after T3: {'met' if same else 'NOT met'}")
    if "dlt" in measured:
        same = not [p for p in problems if "dlt's table" in p]
        out.append(f"- dlt's table after T3 is the floor's plus the removed rows (its merge does not delete): "
                   f"{'met' if same else 'NOT met'}")
    for kind in engines:
        out += _memory_targets(summaries, kind)
    if http and http.get("status") == "ok":
        rate = http["per_second"]
        out.append(f"- per-record HTTP {rate:,.0f} records/s (target >= {HTTP_TARGET:,.0f}): "
                   f"{'met' if rate >= HTTP_TARGET else 'NOT met'}")
    elif http:
        out.append(f"- per-record HTTP: {http.get('status')} ({http.get('reason', '')[:200]})")
    return out


def render(summaries: list[dict[str, Any]], http: dict[str, Any] | None, machine: dict[str, str],
           command: str, problems: list[str], peers: dict[str, dict[str, Any]] | None = None) -> str:
    """The whole report as Markdown."""
    lines = [f"Command: `{command}`", "",
             f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
             f"{machine['os']}, Python {machine['python']}, SQLite {machine['sqlite']}; engine at commit "
             f"{machine['commit']}; load {machine.get('load', 'unknown')}.", "",
             "Peers:"] + peer_lines(peers)
    repeats = {len(r["engine"]["all_seconds"]) for r in summaries}
    lines += ["", f"Seconds, median of {'/'.join(map(str, sorted(repeats))) or 0} run(s): in the process (the job "
              "alone, imports excluded) / whole process (spawn to exit). The engine runs twice: as it runs by "
              "default (its column names the path it took) and on its row path (`arrow: false`, Python's csv "
              "module). Ratios: that engine's seconds over the floor's or the peer's, in the process / whole "
              "process.", ""]
    lines += table(summaries)
    lines += ["", "Peak RSS (each job's own `VmHWM`, the largest over the runs), records/s (rows read / median "
              "seconds in the process) and what T2 wrote to each destination:", ""]
    lines += memory_table(summaries)
    if http is not None:
        lines.append("")
        if http.get("status") == "ok":
            ep = http["endpoint"]
            lines.append(f"Per-record HTTP (median of {http.get('repeat', 1)}): {http['rows']:,} records posted in "
                         f"{http['seconds']:.2f} s = "
                         f"{http['per_second']:,.0f} records/s, engine peak RSS {_mb(http['maxrss_mb'])}; the "
                         f"endpoint accepted {ep['accepted']:,} over {ep['connections']} connection(s).")
        else:
            lines.append(f"Per-record HTTP: {http.get('status')}: {http.get('reason', '')[:300]}")
    lines += ["", "Targets:"] + targets(summaries, http, problems, peers)
    if problems:
        lines += ["", "Problems:"] + [f"- {p}" for p in problems]
    return "\n".join(lines)


def update_readme(path: Path, text: str) -> None:
    """Replace the results block of the README (between its two markers) with ``text``."""
    readme = path.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        raise SystemExit(f"{path.name} has no {START} ... {END} block")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")

"""The benchmark's Markdown report: the table, the targets, the machine; and its place in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

START = "<!-- results:start -->"
END = "<!-- results:end -->"
RATIO_TARGET = 1.4
RSS_TARGET_MB = 150.0
RSS_GROWTH_TARGET = 1.2
HTTP_TARGET = 2000.0


def _mb(value: float) -> str:
    return f"{value:.0f} MB"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def table(summaries: list[dict[str, Any]]) -> list[str]:
    """One row per size and task."""
    lines = ["| rows | task | engine (median s) | floor (median s) | ratio | engine rec/s | floor rec/s "
             "| engine peak RSS | floor peak RSS | bytes written to destination |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in summaries:
        eng, flo = row["engine"], row["floor"]
        if row["task"] == "T2":
            written = "engine {}, floor {}".format(*(
                "0 (files identical)" if not k["dest_changed"] else f"{k['dest_bytes']:,} B (changed)"
                for k in (eng, flo)))
        else:
            written = ""
        lines.append(f"| {row['rows']:,} | {row['task']} | {eng['seconds']:.3f} | {flo['seconds']:.3f} | "
                     f"{row['ratio']:.2f}x | {_rate(eng['per_second'])} | {_rate(flo['per_second'])} | "
                     f"{_mb(eng['maxrss_mb'])} | {_mb(flo['maxrss_mb'])} | {written} |")
    return lines


def targets(summaries: list[dict[str, Any]], http: dict[str, Any] | None, problems: list[str]) -> list[str]:
    """Each target of the issue, met or not, with the figure that decides it."""
    out: list[str] = []
    if not summaries:
        return out
    largest = max(r["rows"] for r in summaries)
    smallest = min(r["rows"] for r in summaries)
    for row in (r for r in summaries if r["rows"] == largest):
        ok = row["ratio"] <= RATIO_TARGET
        out.append(f"- {row['task']} at {largest:,} rows: engine/floor {row['ratio']:.2f}x "
                   f"(target <= {RATIO_TARGET}x): {'met' if ok else 'NOT met'}")
    t2_clean = all(not r[k]["dest_changed"] for r in summaries if r["task"] == "T2" for k in ("engine", "floor"))
    out.append(f"- T2 writes nothing to the destination database: {'met' if t2_clean else 'NOT met'}")
    counts_ok = not [p for p in problems if "counts" in p]
    out.append(f"- T1/T2/T3 counts equal the generator's (T3: changed, added, removed): "
               f"{'met' if counts_ok else 'NOT met'}")
    rows_ok = not [p for p in problems if "rows differ" in p]
    out.append(f"- T3 changed exactly the generator's changed, added and removed rows in the destination (by id): "
               f"{'met' if rows_ok else 'NOT met'}")
    same = not [p for p in problems if "differs from the floor" in p]
    out.append(f"- engine's table equals the floor's after T3: {'met' if same else 'NOT met'}")
    peak = max(r["engine"]["maxrss_mb"] for r in summaries)
    out.append(f"- engine peak RSS {peak:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB): "
               f"{'met' if peak <= RSS_TARGET_MB else 'NOT met'}")
    if largest != smallest:
        big = max(r["engine"]["maxrss_mb"] for r in summaries if r["rows"] == largest)
        small = max(r["engine"]["maxrss_mb"] for r in summaries if r["rows"] == smallest)
        growth = big / small
        out.append(f"- engine peak RSS at {largest:,} / at {smallest:,}: {growth:.2f}x "
                   f"(target <= {RSS_GROWTH_TARGET}x): {'met' if growth <= RSS_GROWTH_TARGET else 'NOT met'}")
    if http and http.get("status") == "ok":
        rate = http["per_second"]
        out.append(f"- per-record HTTP {rate:,.0f} records/s (target >= {HTTP_TARGET:,.0f}): "
                   f"{'met' if rate >= HTTP_TARGET else 'NOT met'}")
    elif http:
        out.append(f"- per-record HTTP: {http.get('status')} ({http.get('reason', '')[:200]})")
    return out


def render(summaries: list[dict[str, Any]], http: dict[str, Any] | None, machine: dict[str, str],
           command: str, problems: list[str]) -> str:
    """The whole report as Markdown."""
    lines = [f"Command: `{command}`", "",
             f"Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory']} RAM, "
             f"{machine['os']}, Python {machine['python']}, SQLite {machine['sqlite']}; engine at commit "
             f"{machine['commit']}; load {machine.get('load', 'unknown')}.", ""]
    lines += table(summaries)
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
    lines += ["", "Targets:"] + targets(summaries, http, problems)
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

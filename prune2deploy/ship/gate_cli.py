"""What `p2d gate` does, so the CLI holds no logic: load, select, evaluate, print, write."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from ..errors import UserError
from ..files import read_json, write_json_atomic
from . import gate as G


def run(run_dir: Path, baseline: Path, junit: Path | None, json_out: Path | None, update: bool, margin: float) -> int:
    """Returns the number of failed checks (0: pass)."""
    report_path = Path(run_dir) / "report.json"
    if not report_path.is_file():
        raise UserError(f"{run_dir}: no report.json (run `p2d run` first)")
    try:
        report = read_json(report_path)
    except ValueError:
        raise UserError(f"{report_path}: not valid JSON") from None
    if update:
        return _update(report, Path(baseline), margin)
    gate = G.select(G.load_baseline(baseline), report)
    checks = G.evaluate(report, gate)
    table = Table(title=f"p2d gate · {report.get('task')} · {report.get('method')} · {report.get('target_sparsity')}")
    for col in ("check", "value", "bound", "result"):
        table.add_column(col)
    for c in checks:
        value = "-" if c.value is None else f"{c.value:.4g}"
        table.add_row(
            c.name, value, f"{c.kind} {c.bound:g}", "[green]pass[/green]" if c.passed else f"[red]FAIL[/red] {c.detail}"
        )
    Console().print(table)
    if junit:
        Path(junit).parent.mkdir(parents=True, exist_ok=True)
        Path(junit).write_text(G.junit_xml(checks, f"p2d-gate-{report.get('task')}"))
    if json_out:
        write_json_atomic(
            json_out,
            {"run_dir": str(run_dir), "passed": all(c.passed for c in checks), "checks": [asdict(c) for c in checks]},
        )
    if not checks:
        raise UserError(f"{baseline}: the matching gate has no checks")
    return sum(not c.passed for c in checks)


def _update(report: dict, baseline: Path, margin: float) -> int:
    if not 0 <= margin < 1:
        raise UserError(f"--margin must be in [0, 1), got {margin}")
    gates = G.load_baseline(baseline) if baseline.is_file() else []
    entry = G.current_as_baseline(report, margin)
    gates = [g for g in gates if g.get("match") != entry["match"]] + [entry]
    tmp = baseline.with_name(baseline.name + ".tmp")
    tmp.write_text(yaml.safe_dump({"gates": gates}, sort_keys=False))
    tmp.replace(baseline)
    print(f"updated {baseline} for {entry['match']}")
    return 0

"""CI gates on a run's report.json: metric, sparsity, latency ratios, speedups.

Baseline file (YAML):

    gates:
      - match: {task: squad, model: minilm-l6, target_sparsity: 0.8}   # every given key must equal
        metric_min: 40.0              # sparse primary metric, absolute
        metric_max_drop: 0.05         # 1 - sparse/dense, at most
        sparsity_min: 0.79            # achieved encoder sparsity (ONNX-verified)
        latency_ratio_max: {onnxruntime: 1.2}   # p50 sparse/dense in the same runtime, every shape
        speedup_min: {deepsparse: 2.0}          # dense ORT p50 / sparse p50, every shape

Exit codes (CLI): 0 all pass, 1 a gate failed, 2 bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import yaml

from ..errors import UserError

GATE_KEYS = {"match", "metric_min", "metric_max_drop", "sparsity_min", "latency_ratio_max", "speedup_min"}
MATCH_KEYS = {"task", "model", "method", "target_sparsity", "target_speedup", "profile"}
IDENT = ("task", "model", "method", "target_sparsity", "target_speedup", "profile")  # what a run is matched by


@dataclass
class Check:
    name: str
    value: float | None
    bound: float
    kind: str  # ">=" or "<="
    passed: bool
    detail: str = ""


def load_baseline(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"baseline file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("gates"), list):
        raise UserError(f"{path}: expected a mapping with a 'gates' list")
    if set(doc) - {"gates"}:
        raise UserError(f"{path}: unknown key '{sorted(set(doc) - {'gates'})[0]}'")
    for i, g in enumerate(doc["gates"]):
        where = f"{path}: gates[{i}]"
        if not isinstance(g, dict):
            raise UserError(f"{where}: expected a mapping")
        unknown = set(g) - GATE_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(GATE_KEYS))})")
        m = g.get("match", {})
        if not isinstance(m, dict) or set(m) - MATCH_KEYS:
            raise UserError(f"{where}.match: keys must be among {', '.join(sorted(MATCH_KEYS))}")
        for k in ("metric_min", "metric_max_drop", "sparsity_min"):
            if k in g and (isinstance(g[k], bool) or not isinstance(g[k], (int, float))):
                raise UserError(f"{where}.{k}: expected a number, got {g[k]!r}")
        for k in ("latency_ratio_max", "speedup_min"):
            if k in g and (
                not isinstance(g[k], dict)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in g[k].values())
            ):
                raise UserError(f"{where}.{k}: expected a mapping runtime -> number")
    return doc["gates"]


def select(gates: list[dict], report: dict) -> dict:
    for g in gates:
        if all(report.get(k) == v for k, v in (g.get("match") or {}).items()):
            return g
    ident = {k: report.get(k) for k in IDENT if report.get(k) is not None}
    raise UserError(f"no gate in the baseline matches this run ({ident})")


def _pairs(rows: list[dict]):
    """(sparse row, dense row of the same runtime and shape, dense ORT row of the shape).
    Rows that failed (no timing) are left out; a gate on their runtime then finds no rows."""
    rows = [r for r in rows if "p50_ms" in r]
    for r in rows:
        if r["model"] != "sparse":
            continue
        same = lambda x, rt: (
            x["model"] == "dense"
            and x["runtime"] == rt
            and x["batch_size"] == r["batch_size"]
            and x["seq_len"] == r["seq_len"]
        )  # noqa: E731
        dense = next((x for x in rows if same(x, r["runtime"])), None)
        ort = next((x for x in rows if same(x, "onnxruntime")), None)
        yield r, dense, ort


def evaluate(report: dict, gate: dict) -> list[Check]:
    checks: list[Check] = []
    metric = report.get("metric")
    sparse = (report.get("metrics") or {}).get("sparse", {}).get(metric)
    dense = (report.get("metrics") or {}).get("dense", {}).get(metric)
    if "metric_min" in gate:
        checks.append(
            Check(
                f"{metric} (sparse)",
                sparse,
                gate["metric_min"],
                ">=",
                sparse is not None and sparse >= gate["metric_min"],
            )
        )
    if "metric_max_drop" in gate:
        drop = (1 - sparse / dense) if sparse is not None and dense else None
        checks.append(
            Check(
                f"{metric} drop vs dense",
                drop,
                gate["metric_max_drop"],
                "<=",
                drop is not None and drop <= gate["metric_max_drop"],
            )
        )
    if "sparsity_min" in gate:
        s = (report.get("onnx") or {}).get("encoder_sparsity")
        checks.append(
            Check("encoder sparsity (ONNX)", s, gate["sparsity_min"], ">=", s is not None and s >= gate["sparsity_min"])
        )
    rows = report.get("bench") or []
    for rt, bound in (gate.get("latency_ratio_max") or {}).items():
        found = False
        for r, d, _ in _pairs(rows):
            if r["runtime"] != rt or d is None:
                continue
            found = True
            ratio = r["p50_ms"] / d["p50_ms"]
            checks.append(
                Check(f"p50 sparse/dense {rt} b{r['batch_size']} s{r['seq_len']}", ratio, bound, "<=", ratio <= bound)
            )
        if not found:
            checks.append(Check(f"p50 sparse/dense {rt}", None, bound, "<=", False, "no bench rows for this runtime"))
    for rt, bound in (gate.get("speedup_min") or {}).items():
        found = False
        for r, _, o in _pairs(rows):
            if r["runtime"] != rt or o is None:
                continue
            found = True
            sp = o["p50_ms"] / r["p50_ms"]
            checks.append(
                Check(f"speedup vs dense ORT {rt} b{r['batch_size']} s{r['seq_len']}", sp, bound, ">=", sp >= bound)
            )
        if not found:
            checks.append(
                Check(f"speedup vs dense ORT {rt}", None, bound, ">=", False, "no bench rows for this runtime")
            )
    return checks


def junit_xml(checks: list[Check], suite: str) -> str:
    failures = sum(not c.passed for c in checks)
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="{escape(suite)}" tests="{len(checks)}" failures="{failures}">',
    ]
    for c in checks:
        out.append(f'  <testcase classname="p2d.gate" name="{escape(c.name)}">')
        if not c.passed:
            msg = (
                f"{c.value} {'<' if c.kind == '>=' else '>'} bound {c.bound}"
                if c.value is not None
                else (c.detail or "missing value")
            )
            out.append(f'    <failure message="{escape(msg, {chr(34): "&quot;"})}"/>')
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def current_as_baseline(report: dict, margin: float) -> dict:
    """A gate entry from this run's values, loosened by `margin` (a fraction) for noise."""
    metric = report.get("metric")
    sparse = report["metrics"]["sparse"].get(metric)
    dense = report["metrics"]["dense"].get(metric)
    gate = {"match": {k: report.get(k) for k in IDENT if report.get(k) is not None}}
    if sparse is not None:
        gate["metric_min"] = round(sparse * (1 - margin), 4)
        if dense:
            gate["metric_max_drop"] = round(max(0.0, 1 - sparse / dense) + margin, 4)
    if (report.get("onnx") or {}).get("encoder_sparsity") is not None:
        gate["sparsity_min"] = round(report["onnx"]["encoder_sparsity"] - 1e-4, 4)
    ratios: dict[str, float] = {}
    for r, d, _ in _pairs(report.get("bench") or []):
        if d is not None:
            ratios[r["runtime"]] = max(ratios.get(r["runtime"], 0.0), r["p50_ms"] / d["p50_ms"])
    if ratios:
        gate["latency_ratio_max"] = {k: round(v * (1 + margin), 3) for k, v in ratios.items()}
    return gate

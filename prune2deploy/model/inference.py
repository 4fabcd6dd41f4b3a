"""Batched inference: collation of pre-tokenized features, model inputs and output heads, and a
fp32 forward pass over a data set (what evaluation, export parity and training share)."""

from __future__ import annotations

import numpy as np
import torch

from ..progress import Bar

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def collate(tokenizer):
    """Pad a list of feature dicts to the longest in the batch ((batch, choices, seq) for multiple choice)."""

    def fn(rows: list[dict]) -> dict[str, torch.Tensor]:
        inputs = [{k: v for k, v in r.items() if k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows]
        verbose = getattr(tokenizer, "deprecation_warnings", {})
        verbose["Asking-to-pad-a-fast-tokenizer"] = True  # pre-tokenized features: pad is right here
        if inputs and isinstance(inputs[0]["input_ids"][0], list):  # multiple choice: [choices][tokens] per row
            flat = [{k: v[c] for k, v in r.items()} for r in inputs for c in range(len(r["input_ids"]))]
            batch = {
                k: v.view(len(inputs), -1, v.shape[-1]) for k, v in tokenizer.pad(flat, return_tensors="pt").items()
            }
        else:
            batch = tokenizer.pad(inputs, return_tensors="pt")
        for key in LABEL_KEYS:
            if key in rows[0]:
                if isinstance(rows[0][key], list):  # a label per token: padded like the inputs, left out of the loss
                    width = batch["input_ids"].shape[-1]
                    batch[key] = torch.tensor([r[key] + [-100] * (width - len(r[key])) for r in rows])
                else:
                    batch[key] = torch.tensor([r[key] for r in rows])
        return dict(batch)

    return fn


def model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def token_level(output) -> bool:
    """Whether a model output has per-token heads (QA start/end logits, a label per token)."""
    if getattr(output, "start_logits", None) is not None:
        return True
    logits = getattr(output, "logits", None)  # (batch, seq, labels); classification and multiple choice are 2-D
    return logits is not None and logits.dim() == 3


def logits_of(output) -> list[torch.Tensor]:
    if getattr(output, "start_logits", None) is not None:
        return [output.start_logits, output.end_logits]
    return [output.logits]


def feature_lengths(features) -> list[int]:
    """Tokens per feature (the longest choice for multiple choice)."""
    return [max(len(c) for c in ids) if ids and isinstance(ids[0], list) else len(ids) for ids in features["input_ids"]]


@torch.no_grad()
def forward_batches(
    model, features, tokenizer, batch_size: int, description: str, pad_to: int | None = None
) -> list[np.ndarray]:
    """Run `model` over a datasets.Dataset of features in fp32; returns one array per output head,
    in the features' order.

    Batches are formed from features sorted by length (each pads to its longest member: fewer
    padded tokens than batches in data order, the same outputs). Token-level
    heads (QA start/end) are padded with -1e4 to `pad_to` positions.
    """
    model.eval()
    fn = collate(tokenizer)
    lengths = feature_lengths(features)
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    outs: list[list[np.ndarray]] = []
    starts = range(0, len(order), batch_size)
    with Bar(description, len(starts)) as bar:
        for i in starts:
            batch = fn([features[j] for j in order[i : i + batch_size]])
            logits = logits_of(model(**model_inputs(batch)))
            length = batch["input_ids"].shape[-1]
            heads = []
            for t in logits:
                a = t.float().cpu().numpy()
                if pad_to is not None and a.ndim >= 2 and a.shape[1] == length:  # per token: (b, seq[, labels])
                    a = np.pad(a, ((0, 0), (0, pad_to - length)) + ((0, 0),) * (a.ndim - 2), constant_values=-1e4)
                heads.append(a)
            outs.append(heads)
            bar.advance()
    if not outs:
        return []
    back = np.argsort(order)  # sorted position of each feature
    return [np.concatenate([o[h] for o in outs])[back] for h in range(len(outs[0]))]

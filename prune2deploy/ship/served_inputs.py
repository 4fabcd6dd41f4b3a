"""What a served request may carry, checked before any work, and how it is padded to a bucket.

Light (stdlib + numpy): it runs inside the serving environment (prune2deploy/ship/mlserver_runtime.py).

- `Limits` (from the artifact's manifest and config.json): rows per request, usable positions
  (RoBERTa-style models reserve `pad_token_id + 1` of them), the vocabulary and token-type ranges.
- `check_ids`: every token id array's values against those ranges; one line naming the input
  and the range it must lie in (negative ids would read embedding rows from the end on ONNX
  Runtime, ids past the vocabulary crash it or read zeros on OpenVINO).
- `pad_to_bucket`: rows padded (attention mask 0) to the smallest of a few fixed lengths, so
  requests of any length share a handful of shapes: DeepSparse compiles one engine per bucket at
  load, and the batcher merges requests of one bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BUCKETS = (16, 32, 64, 128, 256, 384, 512)
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod")
MAX_BODY_BYTES = 8 << 20  # `p2d serve --max-body-mb`: the HTTP body cap (413 above it)


class BadRequest(ValueError):
    """A request the server refuses with a 400 (the message names what is wrong)."""


@dataclass(frozen=True)
class Limits:
    max_batch: int  # rows per request
    max_seq: int  # usable positions
    vocab_size: int
    type_vocab_size: int
    pad_id: int

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(sorted({b for b in BUCKETS if b < self.max_seq} | {self.max_seq}))

    def bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)


def limits(manifest: dict, config: dict, max_batch_default: int = 64) -> Limits:
    positions = int(config.get("max_position_embeddings") or 512)
    pad_id = int(config.get("pad_token_id") or 0)
    if config.get("model_type") in ROBERTA_LIKE:  # positions start after the padding index
        positions -= pad_id + 1
    return Limits(
        max_batch=int(manifest.get("max_batch_size") or max_batch_default),
        max_seq=min(positions, max(BUCKETS)),
        vocab_size=int(config.get("vocab_size") or 0) or 1 << 62,
        type_vocab_size=int(config.get("type_vocab_size") or 0) or 1 << 62,
        pad_id=pad_id,
    )


def check_shape(name: str, shape: list[int], lim: Limits) -> None:
    """A declared tensor shape, before its data is decoded."""
    if len(shape) != 2:
        raise BadRequest(f"input '{name}' must have shape [batch, seq], got {list(shape)}")
    if not 1 <= shape[0] <= lim.max_batch:
        raise BadRequest(f"batch {shape[0]} is outside 1..{lim.max_batch}")
    if not 1 <= shape[1] <= lim.max_seq:
        raise BadRequest(f"sequence length {shape[1]} is outside 1..{lim.max_seq}")


def check_rows(n: int, lim: Limits) -> None:
    if not 1 <= n <= lim.max_batch:
        raise BadRequest(f"batch {n} is outside 1..{lim.max_batch}")


def check_ids(feed: dict[str, np.ndarray], lim: Limits) -> None:
    ranges = {"input_ids": lim.vocab_size, "token_type_ids": lim.type_vocab_size, "attention_mask": 2}
    for name, arr in feed.items():
        hi = ranges.get(name)
        if hi is None or arr.size == 0:
            continue
        lo_v, hi_v = int(arr.min()), int(arr.max())
        if lo_v < 0 or hi_v >= hi:
            bad = lo_v if lo_v < 0 else hi_v
            raise BadRequest(f"input '{name}' holds {bad}, outside 0..{hi - 1}")


def pad_to_bucket(feed: dict[str, np.ndarray], lim: Limits) -> tuple[dict[str, np.ndarray], int]:
    """(the feed padded on the sequence axis to its bucket, the length it came with)."""
    length = next(iter(feed.values())).shape[1]
    target = lim.bucket(length)
    if target == length:
        return feed, length
    out = {}
    for name, arr in feed.items():
        fill = lim.pad_id if name == "input_ids" else 0
        padded = np.full((arr.shape[0], target), fill, dtype=arr.dtype)
        padded[:, :length] = arr
        out[name] = padded
    return out, length


def unpad(outputs: list[np.ndarray], seq_axis: list[bool], length: int) -> list[np.ndarray]:
    """Outputs with a sequence axis (question answering's start/end logits, token labels) cut
    back to the length the request came with."""
    return [o[:, :length] if per_token else o for o, per_token in zip(outputs, seq_axis)]


def encode_text(tokenizer, text: list[str], pair: list[str] | None, names: list[str], lim: Limits):
    """Raw text tokenized with the packaged tokenizer (truncated to the usable positions), as
    the graph's inputs, unpadded beyond the longest row."""
    enc = tokenizer.encode_batch(list(zip(text, pair)) if pair is not None else list(text))
    length = max(len(e.ids) for e in enc)
    arrays = {
        "input_ids": np.full((len(enc), length), lim.pad_id, dtype=np.int64),
        "attention_mask": np.zeros((len(enc), length), dtype=np.int64),
        "token_type_ids": np.zeros((len(enc), length), dtype=np.int64),
    }
    for i, e in enumerate(enc):
        n = len(e.ids)
        arrays["input_ids"][i, :n] = e.ids
        arrays["attention_mask"][i, :n] = 1
        arrays["token_type_ids"][i, :n] = e.type_ids
    return {n: arrays[n] for n in names}

import os
import shutil

import pytest
import torch

os.environ.setdefault("P2D_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def tiny_config(**kw):
    from transformers import BertConfig

    args = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    args.update(kw)
    return BertConfig(**args)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer BERT (hidden 32) with the real MiniLM tokenizer, saved as an HF dir."""
    from transformers import AutoTokenizer, BertModel

    from prune2deploy.model.load import resolve_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-bert")
    BertModel(tiny_config()).save_pretrained(d, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model("minilm-l6")).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def rt_smoke_run(tmp_path_factory, tiny_model_dir):
    """A finished smoke run (rotten_tomatoes, 70%) on the tiny BERT, made once for the tests that
    only read it (gate, package, verify, serve)."""
    from tests.test_cli import p2d_smoke

    out = tmp_path_factory.mktemp("rt-smoke") / "run"
    res = p2d_smoke("rotten_tomatoes", tiny_model_dir, out, "--sparsity", "0.7")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def artifact(rt_smoke_run, tmp_path_factory):
    """`p2d package` of that run (plain layout); tests that change it work on a copy."""
    from tests.test_cli import p2d

    out = tmp_path_factory.mktemp("art") / "plain"
    res = p2d("package", rt_smoke_run, "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture
def tiny_qa():
    from transformers import BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(tiny_config()).eval()


@pytest.fixture
def tiny_cls():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(num_labels=2)).eval()


@pytest.fixture
def clean_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


class PadTokenizer:
    """Just enough of a tokenizer for `collate`: pads nothing (the features share one length)."""

    pad_token_id = 0

    def pad(self, feats, return_tensors="pt", **kw):
        return {k: torch.tensor([f[k] for f in feats]) for k in feats[0]}


def random_features(n: int, length: int = 16, seed: int = 0) -> list[dict]:
    """`n` training features of random token ids, all of `length` tokens."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1000, 2000, (length,), generator=g).tolist(), "attention_mask": [1] * length,
             "token_type_ids": [0] * length} for _ in range(n)]

import numpy as np
import pytest

from prune2deploy.tasks.squad_metric import normalize_answer, squad_v1
from prune2deploy.tasks import squad


def test_normalize_answer_official_rules():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an Apple, a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # 'the' only as a word


def test_squad_v1_known_cases():
    answers = {"q1": ["Denver Broncos"], "q2": ["Santa Clara, California", "Levi's Stadium"], "q3": ["gold"]}
    preds = {"q1": "the Denver Broncos", "q2": "Levi's Stadium in Santa Clara", "q3": "silver"}
    m = squad_v1(preds, answers)
    assert m["exact_match"] == pytest.approx(100 / 3)
    # q2: best of f1 vs each truth: "levis stadium in santa clara" vs "levis stadium": P=2/5 R=1 -> 4/7
    f1_q2 = max(2 * (2 / 5) * 1 / (2 / 5 + 1), 2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))
    assert m["f1"] == pytest.approx(100 * (1 + f1_q2 + 0) / 3)
    assert squad_v1({}, answers)["f1"] == 0.0


def _examples():
    from datasets import Dataset

    ctx = "Super Bowl 50 was played at Levi's Stadium in Santa Clara, California on February 7, 2016."
    return Dataset.from_list(
        [
            {
                "id": "a",
                "title": "t",
                "context": ctx,
                "question": "Where was Super Bowl 50 played?",
                "answers": {"text": ["Levi's Stadium"], "answer_start": [ctx.index("Levi's")]},
            },
            {
                "id": "b",
                "title": "t",
                "context": ctx,
                "question": "When was it played?",
                "answers": {"text": ["February 7, 2016"], "answer_start": [ctx.index("February")]},
            },
        ]
    )


class _Cfg:
    max_length = 48
    doc_stride = 16


@pytest.fixture(scope="module")
def tok():
    from prune2deploy.model.load import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("minilm-l6"))


def test_train_features_label_the_answer_tokens(tok):
    ex = _examples()
    feats = squad.train_features(tok, ex, _Cfg)
    found = set()
    for f in feats:
        s, e = f["start_positions"], f["end_positions"]
        if s == 0 and e == 0:
            continue
        found.add(tok.decode(f["input_ids"][s : e + 1]).replace(" ' ", "'"))
    assert "levi's stadium" in found
    assert "february 7, 2016" in found


def test_postprocess_picks_best_valid_span(tok):
    ex = _examples()
    feats = squad.eval_features(tok, ex, _Cfg)
    n, L = len(feats), _Cfg.max_length
    start = np.full((n, L), -10.0)
    end = np.full((n, L), -10.0)
    for i, f in enumerate(feats):
        offs = f["offset_mapping"]
        ctx = ex[[e["id"] for e in ex].index(f["example_id"])]["context"]
        target = "Levi's Stadium" if f["example_id"] == "a" else "February 7, 2016"
        lo, hi = ctx.index(target), ctx.index(target) + len(target)
        for k, o in enumerate(offs):
            if o is not None and o[0] == lo:
                start[i, k] = 5.0
            if o is not None and o[1] == hi:
                end[i, k] = 5.0
        start[i, 0] = end[i, 0] = 50.0  # the CLS token scores highest but is not in the context
    preds = squad.postprocess(ex, feats, start, end)
    assert preds == {"a": "Levi's Stadium", "b": "February 7, 2016"}
    assert squad_v1(preds, {e["id"]: e["answers"]["text"] for e in ex})["exact_match"] == 100.0


def test_read_squad_json_rejects_truncated_and_answerless(tmp_path):
    from prune2deploy.errors import UserError

    bad = tmp_path / "train-v1.1.json"
    bad.write_text('{"data": [{"title": "x", "paragraphs": [')
    with pytest.raises(UserError, match="truncated or corrupt"):
        squad.read_squad_json(bad)
    bad.write_text(
        '{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": []}]}]}]}'  # noqa: E501 - one message/literal
    )
    with pytest.raises(UserError, match="no answers"):
        squad.read_squad_json(bad)


def test_forward_batches_groups_by_length_and_returns_the_features_order(tiny_qa):
    # batches of similar lengths (less padding), outputs back in the order of the features
    from datasets import Dataset
    from transformers import AutoTokenizer

    from prune2deploy.model.inference import forward_batches
    from prune2deploy.model.load import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    lengths = [9, 3, 12, 5, 7, 4, 11]
    feats = Dataset.from_dict(
        {
            "input_ids": [[101] + [2000 + 13 * k + j for j in range(n - 2)] + [102] for k, n in enumerate(lengths)],
            "attention_mask": [[1] * n for n in lengths],
            "token_type_ids": [[0] * n for n in lengths],
        }
    )
    widths = []
    hook = tiny_qa.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    start, end = forward_batches(tiny_qa, feats, tok, batch_size=3, description="t", pad_to=16)
    hook.remove()
    assert widths == [5, 11, 12]  # sorted: 3,4,5 | 7,9,11 | 12 (in data order: 12, 7, 11)
    assert start.shape == end.shape == (7, 16)
    for k, n in enumerate(lengths):  # each feature alone, no padding at all
        one = forward_batches(tiny_qa, feats.select([k]), tok, batch_size=1, description="t", pad_to=16)
        np.testing.assert_allclose(start[k, :n], one[0][0, :n], atol=1e-5)
        np.testing.assert_allclose(end[k, :n], one[1][0, :n], atol=1e-5)

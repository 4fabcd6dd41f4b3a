"""Recovery on the compact model (train/compaction.py): the same steps as the masked model, a
longer recovery from the step costs a stand-in clock gives, resume after the compaction."""

import torch
from test_masks import _features
from test_structured import KEPT, _masked, _qa

from prune2deploy.pruning import masks as M
from prune2deploy.pruning.structures import compact, widths_of
from prune2deploy.train.compaction import Compaction, stretch
from prune2deploy.train.loop import FitConfig, fit


def tokenizer():
    from conftest import PadTokenizer

    return PadTokenizer()


def cfg(total=8, **kw):
    return FitConfig(total_steps=total, batch_size=8, lr_at=lambda s: 1e-3 * (1 - s / 10), precision="fp32", **kw)


def masked_run(total=8):
    model = _qa(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    mods, st = _masked(model)
    fit(model, _features(), tokenizer(), cfg(total), modules=mods, prune_fn=lambda m, s: None)
    for m in mods.values():
        m._buffers.pop(M.MASK)
    return compact(model, KEPT)


def compact_run(total=8, at=3, ckpt=None, stop_at=None, **comp):
    model = _qa(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    mods, st = _masked(model)
    c = Compaction(at, st.kept, **comp)
    config = cfg(total, checkpoint=ckpt, checkpoint_every=1 if ckpt else 0, checkpoint_tag="t")
    if stop_at is not None:  # interrupted before step `stop_at` (its checkpoint written)
        original = config.lr_at

        def lr_at(s):
            if s == stop_at:
                raise KeyboardInterrupt
            return original(s)

        config.lr_at = lr_at
    log = fit(model, _features(), tokenizer(), config, modules=mods, prune_fn=lambda m, s: None, compaction=c)
    return model, log, c


def test_the_compact_model_takes_the_masked_models_steps():
    """reuse 0: the same steps as training the masked model to the end and compacting it then."""
    reference = masked_run()
    model, log, c = compact_run(reuse=0.0)
    assert widths_of(model) == widths_of(reference) == {"heads": [2, 0, 4], "ffn": [22, 10, 0]}
    assert log["compaction"]["step"] == 3
    assert log["compaction"]["max_abs_diff"] < 1e-5  # the compact model computes the masked one's outputs
    a, b = reference.state_dict(), model.state_dict()
    assert a.keys() == b.keys()
    # the QA head's bias and the last LayerNorm's bias shift every position's logit alike (softmax
    # over positions ignores it): their gradient is 0 up to float noise, which Adam scales up to
    # lr-sized steps in either model; every other tensor moves for real
    noise = {"qa_outputs.bias", "bert.encoder.layer.2.output.LayerNorm.bias"}
    for k in set(a) - noise:  # the optimizer's moments were carried over, cut like the weights
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    x = {"input_ids": torch.randint(1000, 2000, (4, 16), generator=torch.Generator().manual_seed(3))}
    reference.eval(), model.eval()

    def over_positions(logits):  # what the softmax over positions sees: the noise biases' shift taken out
        return logits - logits.mean(dim=-1, keepdim=True)

    assert torch.allclose(over_positions(reference(**x).start_logits), over_positions(model(**x).start_logits),
                          atol=1e-4)
    assert c.masks is not None and c.kept == KEPT


class StepClock:
    """A stand-in clock: a training step 'takes' 4 units on the masked model, 2 on the compact
    one (fit reads it at each step's start and end)."""

    def __init__(self):
        self.t, self.calls, self.compaction = 0.0, 0, None

    def __call__(self):
        self.calls += 1
        if self.calls % 2 == 0:  # a step's end
            self.t += 2.0 if self.compaction.done else 4.0
        return self.t


def timed_run(**comp):
    clock = StepClock()
    model = _qa(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    mods, st = _masked(model)
    clock.compaction = c = Compaction(3, st.kept, clock=clock, probe_steps=2, **comp)
    log = fit(model, _features(), tokenizer(), cfg(8), modules=mods, prune_fn=lambda m, s: None, compaction=c)
    return log


def test_the_saved_time_buys_more_recovery_steps():
    """Compact steps cost half the masked ones: the 5 remaining steps buy 5 more (reuse 1)."""
    info = timed_run(reuse=1.0, max_extra=1.0)["compaction"]
    per_k = 1e3 / (8 * 16)  # a batch: 8 features of 16 tokens
    assert (info["masked_ms_per_ktoken"], info["compact_ms_per_ktoken"]) == (4e3 * per_k, 2e3 * per_k)
    assert info["step_cost_ratio"] == 2
    assert info["remaining_steps"] == 5 and info["extra_steps"] == 5
    log = timed_run(reuse=1.0, max_extra=1.0)
    assert log["losses"][-1]["step"] == 13  # 8 planned + 5
    assert timed_run(reuse=1.0, max_extra=0.6)["compaction"]["extra_steps"] == 3  # capped: 0.6 x 5
    assert timed_run(reuse=0.5, max_extra=1.0)["compaction"]["extra_steps"] == 2  # half the saved time: round(2.5)


def test_the_last_lr_segment_stretches_over_the_longer_recovery():
    lr = stretch(lambda s: 10.0 - s, at=4, old_total=8, new_total=12)
    assert [lr(s) for s in (0, 3, 4, 6, 8, 12)] == [10.0, 7.0, 6.0, 5.0, 4.0, 2.0]


def test_a_checkpoint_after_the_compaction_resumes_on_the_compact_model(tmp_path):
    whole, log, _ = compact_run(reuse=0.0)
    ckpt = tmp_path / "fit.pt"
    try:
        compact_run(reuse=0.0, ckpt=ckpt, stop_at=6)
    except KeyboardInterrupt:
        pass
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6 and state["compacted"]["kept"] == KEPT
    resumed, log2, c = compact_run(reuse=0.0, ckpt=ckpt)
    assert log2["resumed_from"] == 6 and c.kept == KEPT and widths_of(resumed) == widths_of(whole)
    a, b = whole.state_dict(), resumed.state_dict()
    for k in a:  # the same steps, taken again from the checkpoint
        assert torch.allclose(a[k], b[k], atol=1e-6), k

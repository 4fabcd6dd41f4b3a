import pytest
import torch

from prune2deploy.pruning import gmp
from prune2deploy.pruning import masks as M
from prune2deploy.train.loop import FitConfig, fit


def test_prunable_is_encoder_linears_only(tiny_qa):
    mods = M.prunable_modules(tiny_qa)
    assert len(mods) == 2 * 6  # Q, K, V, attn out, FFN in, FFN out per layer
    assert all(".encoder.layer." in n for n in mods)
    assert not any("embeddings" in n or "qa_outputs" in n or "pooler" in n for n in mods)
    with_all = M.prunable_modules(tiny_qa, include_embeddings=True, include_head=True)
    assert any("word_embeddings" in n for n in with_all)
    assert "qa_outputs" in with_all


def test_gmp_global_exact_and_smallest_magnitudes_go(tiny_qa):
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    before = torch.cat([m.weight.detach().abs().flatten() for m in mods.values()])
    gmp.prune_step(mods, 0.6, "global")
    masks = M.get_masks(mods)
    M.check_exact(masks, 0.6, "global")
    flat_mask = torch.cat([m.flatten() for m in masks.values()])
    assert before[~flat_mask].max() <= before[flat_mask].min()  # global magnitude ranking
    for name, mod in mods.items():
        assert torch.all(mod.weight[~mod.weight_mask] == 0)


def test_per_layer_scope_is_uniform(tiny_qa):
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    gmp.prune_step(mods, 0.75, "layer")
    masks = M.get_masks(mods)
    M.check_exact(masks, 0.75, "layer")
    for m in masks.values():
        assert abs((1 - m.float().mean().item()) - 0.75) < 1.0 / m.numel() + 1e-9


def test_masks_monotone_across_steps(tiny_qa):
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    gmp.prune_step(mods, 0.5, "global")
    first = {k: v.clone() for k, v in M.get_masks(mods).items()}
    with torch.no_grad():  # disturb magnitudes: pruned weights must not come back
        for m in mods.values():
            m.weight.add_(torch.randn_like(m.weight))
    gmp.prune_step(mods, 0.7, "global")
    for k, v in M.get_masks(mods).items():
        assert not torch.any(v & ~first[k])


def test_check_exact_fails_on_wrong_count(tiny_qa):
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    gmp.prune_step(mods, 0.5, "global")
    masks = M.get_masks(mods)
    k = next(iter(masks))
    masks[k] = masks[k].clone()
    masks[k].view(-1)[torch.nonzero(masks[k].view(-1))[0]] = False
    try:
        M.check_exact(masks, 0.5, "global")
    except AssertionError:
        return
    raise AssertionError("check_exact accepted a wrong mask")


def _features(n=24, length=16):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    return Dataset.from_list(
        [
            {
                "input_ids": r.tolist(),
                "attention_mask": [1] * length,
                "token_type_ids": [0] * length,
                "start_positions": 3,
                "end_positions": 5,
            }
            for r in ids
        ]
    )


def test_sparsity_exact_after_training_and_embeddings_head_untouched(tiny_qa, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    emb_before = tiny_qa.bert.embeddings.word_embeddings.weight.detach().clone()
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    cfg = FitConfig(total_steps=6, batch_size=8, lr_at=lambda s: 1e-3, precision="fp32", prune_events={0: 0.5, 3: 0.8})
    log = fit(tiny_qa, _features(), tok, cfg, modules=mods, prune_fn=lambda m, s: gmp.prune_step(m, s, "global"))
    assert [e["sparsity"] for e in log["prune_events"]] == [0.5, 0.8]
    masks = M.get_masks(mods)
    M.check_exact(masks, 0.8, "global")
    for mod in mods.values():  # training steps did not revive pruned weights
        assert torch.all(mod.weight[~mod.weight_mask] == 0)
    assert (tiny_qa.bert.embeddings.word_embeddings.weight == 0).float().mean() < 0.01
    assert (tiny_qa.qa_outputs.weight == 0).float().mean() < 0.01
    assert not torch.equal(emb_before, tiny_qa.bert.embeddings.word_embeddings.weight)  # it trained, densely


def test_masks_roundtrip_safetensors(tiny_qa, tmp_path):
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    gmp.prune_step(mods, 0.9, "global")
    M.save_masks(M.get_masks(mods), tmp_path / "m.safetensors")
    loaded = M.load_masks(tmp_path / "m.safetensors")
    for k, v in M.get_masks(mods).items():
        assert torch.equal(loaded[k], v)


def test_two_four_masks_keep_two_of_every_four_and_never_regrow():
    import torch

    from prune2deploy.pruning import masks as M

    torch.manual_seed(0)
    w = torch.randn(8, 16)
    cur = torch.ones(8, 16, dtype=torch.bool)
    new = M.masks_from_scores({"w": w.abs()}, {"w": cur}, 0.5, "global", "2:4")["w"]
    assert new.shape == w.shape and new.reshape(-1, 4).sum(1).eq(2).all()
    top2 = torch.topk(w.abs().reshape(-1, 4), 2, dim=1).indices
    assert new.reshape(-1, 4).gather(1, top2).all()  # the two largest of each group are kept
    M.check_pattern({"w": new}, 2, 4)
    again = M.masks_from_scores({"w": (w * new).abs() + 0.0}, {"w": new}, 0.5, "global", "2:4")["w"]
    assert torch.equal(again, new)  # pruned weights (score 0, ranked last) never come back
    bad = new.clone()
    bad[0, :4] = True
    with pytest.raises(AssertionError, match="do not keep exactly 2"):
        M.check_pattern({"w": bad}, 2, 4)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        M.masks_from_scores({"w": torch.rand(2, 6)}, {"w": torch.ones(2, 6, dtype=torch.bool)}, 0.5, "global", "2:4")


def test_pruned_gradients_do_not_count_in_the_clipping_norm(tiny_qa, tiny_model_dir, monkeypatch):
    """At high sparsity the gradients of pruned weights would dominate the clipping norm and
    shrink the surviving weights' step: they are zeroed before clipping."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    seen = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **k):
        params = list(params)
        seen.append(max(float(m.weight.grad[~m.weight_mask].abs().max()) for m in mods.values()))
        return real(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    cfg = FitConfig(total_steps=3, batch_size=8, lr_at=lambda s: 1e-3, precision="fp32", prune_events={0: 0.9})
    fit(tiny_qa, _features(), tok, cfg, modules=mods, prune_fn=lambda m, s: gmp.prune_step(m, s, "global"))
    assert len(seen) == 3 and seen == [0.0, 0.0, 0.0]


def test_length_grouped_batches_cover_the_epoch_once_and_pad_less():
    import random

    from prune2deploy.train.loop import batch_order

    rng = random.Random(0)
    lengths = [rng.randint(10, 256) for _ in range(1000)]
    steps = 1000 // 16
    grouped = [batch_order(1000, 16, 0, s, lengths) for s in range(steps)]
    plain = [batch_order(1000, 16, 0, s) for s in range(steps)]
    flat = [i for b in grouped for i in b]
    assert len(flat) == len(set(flat)) == steps * 16  # every feature at most once an epoch
    assert set(flat) == {i for b in plain for i in b}  # the same features as without grouping
    padded = lambda batches: sum(16 * max(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padded(grouped) < 0.75 * padded(plain)
    assert grouped[3] == batch_order(1000, 16, 0, 3, lengths)  # found again after a restart
    assert grouped != [batch_order(1000, 16, 0, s + steps, lengths) for s in range(steps)]  # a new order next epoch


def test_block4_gmp_prunes_whole_groups_by_their_norm(tiny_qa):
    mods = M.prunable_modules(tiny_qa)
    M.attach_masks(mods)
    norms = {n: m.weight.detach().reshape(m.weight.shape[0], -1, 4).norm(dim=-1) for n, m in mods.items()}
    gmp.prune_step(mods, 0.5, "global", {"pattern": "block4"})
    masks = M.get_masks(mods)
    M.check_blocks(masks, 4)
    M.check_exact(masks, 0.5, "global", group=4)
    kept = torch.cat([masks[f"{n}.weight"].reshape(*norms[n].shape, 4)[..., 0].flatten() for n in mods])
    flat = torch.cat([norms[n].flatten() for n in mods])
    assert flat[~kept].max() <= flat[kept].min()  # the smallest groups went, as groups
    gmp.prune_step(mods, 0.8, "global", {"pattern": "block4"})  # a later step only adds groups
    later = M.get_masks(mods)
    assert all(bool((later[k] <= masks[k]).all()) for k in masks)
    M.check_blocks(later, 4)
    M.check_exact(later, 0.8, "global", group=4)


def test_block_pattern_checks_and_parsing():
    m = {"w": torch.ones(2, 8, dtype=torch.bool)}
    m["w"][0, :4] = False
    M.check_blocks(m, 4)
    m["w"][1, 5] = False
    with pytest.raises(AssertionError, match="1 groups of 4 are partly pruned"):
        M.check_blocks(m, 4)
    assert M.block_of("block4") == 4 and M.block_of("2:4") is None and M.parse_pattern("block4") is None
    assert M.group_of("block4") == 4 and M.group_of("2:4") == 4 and M.group_of("unstructured") == 1
    with pytest.raises(ValueError, match="'blockK' needs a whole K"):
        M.block_of("blockx")

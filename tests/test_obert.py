import pytest
import torch
from torch import nn

from prune2deploy.errors import UserError
from prune2deploy.pruning import masks as M
from prune2deploy.pruning import obert


def test_woodbury_equals_direct_inverse():
    torch.manual_seed(0)
    d, B, m, damp = 23, 5, 40, 1e-2  # 23 is not a multiple of 5: the last block is padded
    grads = [torch.randn(d) for _ in range(m)]
    finv = obert.fisher_inverse((obert.blocks_of(g, B) for g in grads), n_blocks=5, block=B, damp=damp, m=m)
    G = torch.stack([obert.blocks_of(g, B) for g in grads])  # (m, n, B)
    for b in range(5):
        F = damp * torch.eye(B) + G[:, b, :].T @ G[:, b, :] / m
        assert torch.allclose(finv[b], torch.linalg.inv(F), rtol=1e-3, atol=1e-3)


def _least_squares(block, seed=0, d=20, n=400):
    """Quadratic loss whose Hessian is exactly X^T X / n, with gradients g_i = x_i.

    Features are strongly correlated within each block of `block` weights (the structure
    the block-diagonal Fisher assumes) and independent across blocks.
    """
    torch.manual_seed(seed)
    X = torch.cat(
        [torch.randn(n, 2) @ torch.randn(2, block) + 0.3 * torch.randn(n, block) for _ in range(d // block)], dim=1
    )
    H = X.T @ X / n
    lin = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1, d))
    return lin, X, H


def _ctx(X, block, damp=1e-4):
    def gradients(names):
        for x in X:
            yield {n: x.view(1, -1) for n in names}

    return {"obert": {"block_size": block, "num_grads": X.shape[0], "damp": damp}, "gradients": gradients}


@pytest.mark.parametrize("block", [20, 5])
def test_obs_step_beats_magnitude_on_known_hessian(block):
    lin, X, H = _least_squares(block)
    w0 = lin.weight.detach().clone()
    mods = {"lin": lin}
    M.attach_masks(mods)
    obert.prune_step(mods, 0.5, "global", _ctx(X, block))
    dw = (lin.weight.detach() - w0).view(-1)
    loss_obs = 0.5 * dw @ H @ dw
    assert int((~lin.weight_mask).sum()) == 10
    assert torch.all(lin.weight[~lin.weight_mask] == 0)
    # magnitude pruning at the same sparsity, no update
    keep = torch.ones(20, dtype=torch.bool)
    keep[torch.argsort(w0.abs().view(-1))[:10]] = False
    dw_mag = torch.where(keep, torch.zeros(20), -w0.view(-1))
    loss_mag = 0.5 * dw_mag @ H @ dw_mag
    assert loss_obs < loss_mag
    # and the OBS update lowers the loss versus the same mask with no update
    dw_same = torch.where(lin.weight_mask.view(-1), torch.zeros(20), -w0.view(-1))
    assert loss_obs < 0.5 * dw_same @ H @ dw_same


def test_obs_update_zeroes_the_pruned_set_exactly():
    torch.manual_seed(3)
    B = 6
    A = torch.randn(4, B, B)
    finv = A @ A.transpose(1, 2) + torch.eye(B)  # SPD per block
    w = torch.randn(4, B)
    pruned = torch.rand(4, B) < 0.5
    dw = obert.obs_update(w, finv, pruned)
    assert torch.allclose((w + dw)[pruned], torch.zeros(int(pruned.sum())), atol=1e-4)


def test_layer_not_multiple_of_block_and_masks_exact():
    torch.manual_seed(1)
    mods = {"a": nn.Linear(7, 3), "b": nn.Linear(5, 5)}  # 21 and 25 weights, block 4
    M.attach_masks(mods)

    def gradients(names):
        for i in range(16):
            yield {n: torch.randn_like(mods[n].weight) for n in names}

    ctx = {"obert": {"block_size": 4, "num_grads": 16, "damp": 1e-3}, "gradients": gradients}
    obert.prune_step(mods, 0.6, "layer", ctx)
    M.check_exact(M.get_masks(mods), 0.6, "layer")
    obert.prune_step(mods, 0.8, "global", ctx)
    M.check_exact(M.get_masks(mods), 0.8, "global")
    for m in mods.values():
        assert torch.all(m.weight[~m.weight_mask] == 0)


def test_block_larger_than_layer_is_a_user_error():
    mods = {"a": nn.Linear(3, 2)}
    M.attach_masks(mods)
    with pytest.raises(UserError, match="block size"):
        obert.prune_step(
            mods,
            0.5,
            "global",
            {"obert": {"block_size": 50, "num_grads": 1, "damp": 1e-7}, "gradients": lambda n: iter(())},
        )


def test_chunked_equals_unchunked():
    torch.manual_seed(2)

    def make():
        torch.manual_seed(5)
        return {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}

    grads = [{n: torch.randn(4, 8) for n in ("a", "b")} for _ in range(12)]
    out = []
    for chunk_bytes in (1 << 30, 1):
        mods = make()
        M.attach_masks(mods)
        ctx = {
            "obert": {"block_size": 4, "num_grads": 12, "damp": 1e-3, "chunk_bytes": chunk_bytes},
            "gradients": lambda names: ({n: g[n] for n in names} for g in grads),
        }
        obert.prune_step(mods, 0.5, "global", ctx)
        out.append({n: m.weight.detach().clone() for n, m in mods.items()})
    for n in out[0]:
        assert torch.allclose(out[0][n], out[1][n], atol=1e-5)


def test_chunked_equals_unchunked_when_gradients_depend_on_the_weights():
    """A real gradient stream is computed from the current weights: the second chunk's pass
    must see the weights the first pass scored, not ones an earlier chunk already updated."""

    def make():
        torch.manual_seed(5)
        return {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}

    torch.manual_seed(3)
    base = [{n: torch.randn(4, 8) for n in ("a", "b")} for _ in range(12)]
    out = []
    for chunk_bytes in (1 << 30, 1):
        mods = make()
        M.attach_masks(mods)

        def gradients(names, mods=mods):  # like a loss's gradient: it moves with every weight
            total = sum(float(m.weight.detach().abs().sum()) for m in mods.values())
            return ({n: g[n] * total + mods[n].weight.detach() for n in names} for g in base)

        ctx = {
            "obert": {"block_size": 4, "num_grads": 12, "damp": 1e-3, "chunk_bytes": chunk_bytes},
            "gradients": gradients,
        }
        obert.prune_step(mods, 0.5, "global", ctx)
        out.append({n: m.weight.detach().clone() for n, m in mods.items()})
    for n in out[0]:
        assert torch.allclose(out[0][n], out[1][n], atol=1e-5), n


def test_obs_update_is_the_constrained_minimum_of_the_quadratic_model():
    """dw minimises 1/2 dw^T F dw subject to (w + dw)_Q = 0: brute force by the KKT system."""
    torch.manual_seed(4)
    B = 6
    A = torch.randn(B, B, dtype=torch.float64)
    F = A @ A.T + 0.5 * torch.eye(B, dtype=torch.float64)  # a known SPD Hessian
    w = torch.randn(B, dtype=torch.float64)
    pruned = torch.tensor([True, False, True, False, False, True])
    dw = (
        obert.obs_update(w.view(1, B).float(), torch.linalg.inv(F).view(1, B, B).float(), pruned.view(1, B))
        .view(B)
        .double()
    )
    Q = pruned.nonzero().view(-1)
    E = torch.eye(B, dtype=torch.float64)[Q]  # constraint rows: E dw = -w_Q
    kkt = torch.zeros(B + len(Q), B + len(Q), dtype=torch.float64)
    kkt[:B, :B], kkt[:B, B:], kkt[B:, :B] = F, E.T, E
    rhs = torch.cat([torch.zeros(B, dtype=torch.float64), -w[Q]])
    best = torch.linalg.solve(kkt, rhs)[:B]
    assert torch.allclose(dw, best, atol=1e-4)
    assert torch.allclose((w + dw)[Q], torch.zeros(len(Q), dtype=torch.float64), atol=1e-5)
    for _ in range(20):  # and no other feasible step is cheaper
        other = best + torch.randn(B, dtype=torch.float64) * (~pruned).double() * 0.1
        assert other @ F @ other >= best @ F @ best - 1e-9


@pytest.mark.parametrize("group", [1, 7, 32, 64])
def test_accumulated_inverse_equals_rank_one_chain_and_direct_inverse(group):
    torch.manual_seed(1)
    d, B, m, damp = 120, 10, 50, 1e-3
    grads = [obert.blocks_of(torch.randn(d), B) for _ in range(m)]
    one = obert.init_inverse(d // B, B, damp)
    for g in grads:
        obert.rank_one_update_(one, g, m)
    grouped = obert.fisher_inverse(iter(grads), d // B, B, damp, m, group=group)
    G = torch.stack(grads)  # (m, n, B)
    for b in range(d // B):
        direct = torch.linalg.inv(damp * torch.eye(B) + G[:, b, :].T @ G[:, b, :] / m)
        assert torch.allclose(grouped[b], direct, rtol=1e-3, atol=1e-3 * direct.abs().max())
        assert torch.allclose(grouped[b], one[b], rtol=1e-3, atol=1e-3 * direct.abs().max())


def test_obert_settings_are_typed_and_checked_where_defined():
    from prune2deploy.pruning.registry import get_method, settings_for

    s = settings_for("obert", {"obert": {"num_grads": 64, "grad_batch_size": 8}})
    assert (s.num_grads, s.grad_batch_size, s.block_size, s.damp) == (64, 8, 50, 1e-7)  # the rest default
    with pytest.raises(UserError, match=r"prune.options.obert: unknown key 'grads'"):
        settings_for("obert", {"obert": {"grads": 64}})
    with pytest.raises(UserError, match=r"prune.options.obert.damp must be > 0"):
        settings_for("obert", {"obert": {"damp": 0}})
    with pytest.raises(UserError, match=r"prune.options.obert.num_grads: expected an integer"):
        settings_for("obert", {"obert": {"num_grads": "many"}})
    with pytest.raises(UserError, match=r"block_size 50 is larger than layer a \(6 weights\)"):
        s.check({"a": nn.Linear(3, 2)})
    assert settings_for("gmp", {}) == get_method("gmp").Settings()  # GMP has no settings of its own


def test_a_method_object_prunes_with_its_named_resources():
    """The prune stage hands `fit` the method's prune_step; oBERT gets its gradient stream as a
    named resource and salts it per event (a resumed run draws the same gradients)."""
    from prune2deploy.pruning.registry import get_method, settings_for

    torch.manual_seed(0)
    mods = {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}
    M.attach_masks(mods)
    salts = []

    def gradients(names, salt=0):
        salts.append(salt)
        g = torch.Generator().manual_seed(salt)
        return ({n: torch.randn(4, 8, generator=g) for n in names} for _ in range(4))

    method = get_method("obert")(
        settings_for("obert", {"obert": {"block_size": 4, "num_grads": 4, "damp": 1e-3}}),
        "global",
        None,
        gradients=gradients,
    )
    method.prune_step(mods, 0.5)
    M.check_exact(M.get_masks(mods), 0.5, "global")
    assert salts and set(salts) == {500000}


def test_group_saliency_is_the_joint_obs_cost_and_block4_prunes_whole_groups():
    torch.manual_seed(6)
    B, k = 8, 4
    A = torch.randn(3, B, B)
    finv = A @ A.transpose(1, 2) + 0.5 * torch.eye(B)
    w = torch.randn(3, B)
    sal = obert.group_saliency(w, finv, k)
    assert sal.shape == (3, 2)
    for b in range(3):
        for g in range(2):
            q = slice(g * k, (g + 1) * k)
            want = 0.5 * w[b, q] @ torch.linalg.inv(finv[b, q, q]) @ w[b, q]
            assert torch.allclose(sal[b, g], want, rtol=1e-4)
    mods = {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}
    M.attach_masks(mods)
    grads = [{n: torch.randn(4, 8) for n in mods} for _ in range(8)]
    ctx = {
        "obert": {"block_size": 8, "num_grads": 8, "damp": 1e-3},
        "pattern": "block4",
        "gradients": lambda names: ({n: g[n] for n in names} for g in grads),
    }
    obert.prune_step(mods, 0.5, "global", ctx)
    masks = M.get_masks(mods)
    M.check_blocks(masks, 4)
    M.check_exact(masks, 0.5, "global", group=4)
    for m in mods.values():
        assert torch.all(m.weight[~m.weight_mask] == 0)
    with pytest.raises(UserError, match=r"block_size a multiple of 4, got 6 \(e.g. 4\)"):
        obert.prune_step(mods, 0.7, "global", {**ctx, "obert": {"block_size": 6, "num_grads": 8, "damp": 1e-3}})


def test_gradient_stream_follows_the_model_to_its_device(monkeypatch):
    """fit moves the student (to CUDA) after the prune stage makes the gradient stream: the
    stream must put each batch where the model is when it runs, not where it was when made
    (the first oBERT run on a GPU failed so). No GPU here: the model reports the meta device
    once the stream is made, and a stand-in loss records where the batches went."""
    from datasets import Dataset
    from transformers import AutoTokenizer, BertForSequenceClassification

    from conftest import tiny_config
    from prune2deploy.train import loop as training
    from prune2deploy.model.load import resolve_model
    from prune2deploy.pruning import masks as M

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(num_labels=2))
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    ids = [[101, 2000 + i, 2001 + i, 102] for i in range(8)]
    labels = [i % 2 for i in range(8)]
    features = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 4] * 8, "labels": labels})
    modules = M.prunable_modules(model)
    names = list(modules)[:2]
    seen = []

    def loss(model_, batch, *args):
        seen.extend(v.device.type for v in batch.values())
        return sum(modules[n].weight.sum() for n in names)

    monkeypatch.setattr(training, "training_loss", loss)
    gradients = training.gradient_stream(model, features, tok, modules, 2, 4, precision="fp32")
    model.parameters = lambda *a, **k: iter([torch.empty(0, device="meta")])  # fit moved it
    grads = list(gradients(names))
    assert len(grads) == 2 and seen and set(seen) == {"meta"}


def _obert(settings: dict, gradients, events=()):
    from prune2deploy.pruning.registry import get_method, settings_for

    return get_method("obert")(
        settings_for("obert", {"obert": settings}), "global", None, gradients=gradients, events=events
    )


def _two_layers(seed=0):
    torch.manual_seed(seed)
    mods = {"a": nn.Linear(8, 4), "b": nn.Linear(8, 4)}
    M.attach_masks(mods)
    return mods


def test_training_gradients_give_the_same_step_as_the_same_gradients_drawn_fresh():
    # `gradients: training` sums the Fisher from the steps before the event: the same OBS step as
    # the fresh stream would give with those gradients, and no extra passes
    torch.manual_seed(1)
    grads = [{n: torch.randn(4, 8) for n in ("a", "b")} for _ in range(4)]
    cfg = {"block_size": 4, "num_grads": 4, "damp": 1e-3}

    fresh_mods = _two_layers()
    _obert(cfg, lambda names, salt=0: iter(grads)).prune_step(fresh_mods, 0.5)

    def no_fresh(names, salt=0):
        raise AssertionError("the fresh stream must not be drawn")

    mods = _two_layers()
    method = _obert({**cfg, "gradients": "training"}, no_fresh, events=[0, 10, 20])
    for step in range(3, 10):  # steps 3..5 are more than num_grads before the event at 10: not observed
        for n, m in mods.items():
            m.weight.grad = (grads[step - 6][n] if step >= 6 else torch.randn(4, 8) * 100).clone()
        method.observe(step, mods)
        for m in mods.values():
            m.weight.grad.mul_(0.01)  # what clipping does to .grad afterwards: the Fisher keeps the raw one
    method.prune_step(mods, 0.5)
    got, want = M.get_masks(mods), M.get_masks(fresh_mods)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    for n in mods:
        assert torch.allclose(mods[n].weight, fresh_mods[n].weight, atol=1e-5)
    assert method.fisher is None and method.observed == 0  # the next event starts a new sum


def test_training_gradients_fall_back_to_fresh_ones_when_too_few_were_seen():
    calls = []

    def fresh(names, salt=0):
        calls.append(salt)
        return ({n: torch.randn(4, 8) for n in names} for _ in range(4))

    mods = _two_layers()
    method = _obert({"block_size": 4, "num_grads": 4, "damp": 1e-3, "gradients": "training"}, fresh, events=[0, 10])
    method.prune_step(mods, 0.3)  # the event at step 0: no training step behind it
    for n, m in mods.items():
        m.weight.grad = torch.randn(4, 8)
    method.observe(9, mods)  # one gradient of the 4: under half
    method.prune_step(mods, 0.5)
    assert calls == [300000, 500000]
    with pytest.raises(UserError, match=r"prune.options.obert.gradients must be one of fresh, training"):
        _obert({"gradients": "stale"}, fresh)


def test_invert_by_cholesky_matches_a_direct_inverse_and_falls_back_where_it_cannot_factor():
    torch.manual_seed(0)
    g = torch.randn(40, 10, 16)
    f = 1e-7 * torch.eye(10) + g @ g.transpose(1, 2) / 16  # positive definite: Cholesky
    f[3] = torch.diag(torch.tensor([1.0, -2.0] * 5))  # indefinite: no Cholesky, a general inverse
    ref = torch.linalg.inv(f.double())
    out = obert.invert_(f.clone(), rows=16)  # slices of 16 blocks: the fallback in the first
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    assert torch.isfinite(out).all()


def test_the_training_step_fisher_survives_a_checkpoint(tmp_path):
    """A run resumed between the observed steps and the event prunes on the same Fisher: the
    method's state goes into the training checkpoint (weights_only) and back."""
    from prune2deploy.train.loop import load_checkpoint, save_checkpoint

    torch.manual_seed(2)
    grads = [{n: torch.randn(4, 8) for n in ("a", "b")} for _ in range(4)]
    cfg = {"block_size": 4, "num_grads": 4, "damp": 1e-3, "gradients": "training"}

    def no_fresh(names, salt=0):
        raise AssertionError("the fresh stream must not be drawn")

    def observed(method, mods, steps):
        for step in steps:
            for n, m in mods.items():
                m.weight.grad = grads[step - 6][n].clone()
            method.observe(step, mods)

    whole_mods = _two_layers()
    whole = _obert(cfg, no_fresh, events=[0, 10])
    observed(whole, whole_mods, range(6, 10))
    whole.prune_step(whole_mods, 0.5)

    mods = _two_layers()
    first = _obert(cfg, no_fresh, events=[0, 10])
    observed(first, mods, range(6, 8))
    save_checkpoint(tmp_path / "ckpt.pt", {"tag": "t", "method": first.state_dict()})
    resumed = _obert(cfg, no_fresh, events=[0, 10])  # a new process: nothing observed yet
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt", "t")["method"])
    observed(resumed, mods, range(8, 10))
    resumed.prune_step(mods, 0.5)
    got, want = M.get_masks(mods), M.get_masks(whole_mods)
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert all(torch.allclose(mods[n].weight, whole_mods[n].weight, atol=1e-6) for n in mods)

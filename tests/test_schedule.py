import math

import pytest

from prune2deploy.pruning.schedule import cubic, make_plan
from prune2deploy.recipe import PruneConfig, Recipe, load_recipe


def test_cubic_endpoints_and_shape():
    assert cubic(2, 2, 26, 0.7, 0.9) == pytest.approx(0.7)
    assert cubic(26, 2, 26, 0.7, 0.9) == pytest.approx(0.9)
    mid = cubic(14, 2, 26, 0.7, 0.9)
    assert mid == pytest.approx(0.9 - 0.2 * 0.5**3)
    assert 0.7 < mid < 0.9
    # cubic prunes fast early, slowly late
    assert cubic(6, 2, 26, 0.7, 0.9) - 0.7 > 0.9 - cubic(22, 2, 26, 0.7, 0.9)


def test_paper_recipe_events():
    p = PruneConfig(
        target_sparsity=0.9,
        epochs=30,
        reference_sparsity=0.9,
        init_sparsity=0.7,
        prune_start=2,
        prune_end=26,
        prune_freq=4,
    )
    plan = make_plan(p, 1.0, steps_per_epoch=100)
    assert plan.total_steps == 3000
    assert [s for s, _ in plan.prune_steps] == [200, 600, 1000, 1400, 1800, 2200, 2600]
    sp = [v for _, v in plan.prune_steps]
    assert sp[0] == pytest.approx(0.7) and sp[-1] == 0.9
    assert all(a <= b for a, b in zip(sp, sp[1:]))


def test_lr_rewinds_at_each_pruning_step():
    p = PruneConfig(
        target_sparsity=0.9,
        epochs=30,
        init_sparsity=0.7,
        prune_start=2,
        prune_end=26,
        prune_freq=4,
        lr=8e-5,
        lr_min=8e-6,
    )
    plan = make_plan(p, 1.0, steps_per_epoch=100)
    assert plan.lr_at(0) == pytest.approx(8e-5)
    assert plan.lr_at(199) == pytest.approx(8e-6, rel=0.05)
    for step, _ in plan.prune_steps:
        assert plan.lr_at(step) == pytest.approx(8e-5)
        assert plan.lr_at(step - 1) < 2e-5
    no_rewind = make_plan(PruneConfig(**{**p.__dict__, "lr_rewind": False}), 1.0, 100)
    assert no_rewind.lr_at(600) < no_rewind.lr_at(200)


def test_schedule_scales_with_target_sparsity():
    r80 = Recipe(task="squad", prune=PruneConfig(target_sparsity=0.8, reference_sparsity=0.9))
    r90 = Recipe(task="squad", prune=PruneConfig(target_sparsity=0.9, reference_sparsity=0.9))
    r97 = Recipe(task="squad", prune=PruneConfig(target_sparsity=0.97, reference_sparsity=0.9))
    assert r90.epoch_scale() == pytest.approx(1.0)
    assert r80.epoch_scale() == pytest.approx(math.log(0.2) / math.log(0.1))
    assert r97.epoch_scale() > 1.4
    plans = [make_plan(r.prune, r.epoch_scale(), 100) for r in (r80, r90, r97)]
    assert plans[0].total_steps < plans[1].total_steps < plans[2].total_steps
    assert plans[0].prune_steps[-1][0] < plans[1].prune_steps[-1][0] < plans[2].prune_steps[-1][0]
    fixed = Recipe(task="squad", prune=PruneConfig(target_sparsity=0.97, scale_with_sparsity=False))
    assert fixed.epoch_scale() == 1.0


def test_first_step_is_the_same_share_of_a_lower_target_and_zero_target_has_no_events():
    p = PruneConfig(
        target_sparsity=0.5,
        init_sparsity=0.7,
        reference_sparsity=0.9,
        epochs=4,
        prune_start=1,
        prune_end=3,
        prune_freq=1,
    )
    plan = make_plan(p, 1.0, 10)
    assert plan.prune_steps[0] == (10, pytest.approx(0.7 * 0.5 / 0.9))  # not one-shot: 0.39, then cubic to 0.5
    assert plan.prune_steps[-1] == (30, 0.5) and len(plan.prune_steps) == 3
    high = make_plan(
        PruneConfig(
            target_sparsity=0.97,
            init_sparsity=0.7,
            reference_sparsity=0.9,
            epochs=4,
            prune_start=1,
            prune_end=3,
            prune_freq=1,
        ),
        1.0,
        10,
    )
    assert high.prune_steps[0][1] == 0.7  # at and above the reference: the recipe's first step
    one_shot = make_plan(
        PruneConfig(target_sparsity=0.5, init_sparsity=0.7, epochs=4, prune_start=0, prune_end=0, prune_freq=1), 1.0, 10
    )
    assert one_shot.prune_steps == ((0, 0.5),)
    plan0 = make_plan(PruneConfig(target_sparsity=0.0, epochs=2, prune_start=0, prune_end=1, prune_freq=1), 1.0, 10)
    assert plan0.prune_steps == ()


def test_epoch_scale_is_capped_and_a_layer_keeping_a_handful_is_warned(tiny_qa, capsys):
    from prune2deploy.pruning import masks as M
    from prune2deploy.pruning.masks import warn_few_kept

    r = load_recipe("squad", "default", {"prune.target_sparsity": 0.999999})
    assert r.epoch_scale() == pytest.approx(r.prune.max_epoch_scale) and r.prune.max_epoch_scale == 3.0
    mods = M.prunable_modules(tiny_qa)  # smallest layer: 32 x 32 = 1024 weights
    assert warn_few_kept(mods, 0.9) is None  # keeps ~102
    msg = warn_few_kept(mods, 0.995)
    assert msg and "keeps about 5 of 1024 weights" in msg
    assert "keeps about 5 of 1024" in capsys.readouterr().err  # said even when quiet

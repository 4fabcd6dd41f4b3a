import pytest

from prune2deploy.errors import UserError
from prune2deploy.recipe import PIPELINES_DIR, load_recipe


@pytest.mark.parametrize("task", ["squad", "rotten_tomatoes", "imdb"])
@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_pipeline_profile_loads(task, profile):
    r = load_recipe(task, profile)
    assert r.task == task and r.profile == profile
    assert r.prune.include_embeddings is False and r.prune.include_head is False
    assert r.prune.kd_temperature <= 2.0


def test_paper_profile_is_the_published_recipe():
    r = load_recipe("squad", "paper", {"prune.target_sparsity": 0.9})
    p = r.prune
    assert (p.epochs, p.init_sparsity, p.prune_start, p.prune_end, p.prune_freq) == (30, 0.7, 2, 26, 4)
    assert (p.lr, p.lr_min, p.kd_hardness, p.kd_temperature) == (8e-5, 8e-6, 1.0, 2.0)
    assert (p.obert_block_size, p.obert_num_grads, p.obert_damp) == (50, 1024, 1e-7)
    assert r.data.max_length == 384 and r.data.doc_stride == 128
    assert r.epoch_scale() == pytest.approx(1.0)


def test_overrides_and_coercion():
    r = load_recipe("squad", "smoke", {"prune.target_sparsity": "0.9", "prune.lr": 1e-3, "bench.batch_sizes": "1,4"})
    assert r.prune.target_sparsity == 0.9 and r.prune.lr == 1e-3 and r.bench.batch_sizes == (1, 4)


@pytest.mark.parametrize("overrides,match", [
    ({"prune.target_sparsity": 1.0}, r"\[0, 1\)"),
    ({"prune.target_sparsity": -0.1}, r"\[0, 1\)"),
    ({"prune.target_sparsity": "abc"}, "expected a number"),
    ({"prune.method": "nope"}, "unknown method 'nope'"),
    ({"prune.bogus": 1}, "unknown key 'bogus'"),
    ({"teacher.epochs": [1]}, "expected a number"),
    ({"prune.scope": "row"}, "scope"),
])
def test_bad_overrides(overrides, match):
    with pytest.raises(UserError, match=match):
        load_recipe("squad", "smoke", overrides)


def test_unknown_task_and_profile():
    with pytest.raises(UserError, match="unknown task 'nope'"):
        load_recipe("nope")
    with pytest.raises(UserError, match="unknown profile 'huge'"):
        load_recipe("squad", "huge")


def test_bad_recipe_files(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("base: {teacher: {epochs: [1, 2]}}\nprofiles: {smoke: {}}\n")
    with pytest.raises(UserError, match="teacher.epochs"):
        load_recipe("squad", "smoke", recipe_file=f)
    f.write_text("base: {data: {max_length: 128}\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe("squad", "smoke", recipe_file=f)
    f.write_text("base: {unknown_section: 1}\nprofiles: {smoke: {}}\n")
    with pytest.raises(UserError, match="unknown key 'unknown_section'"):
        load_recipe("squad", "smoke", recipe_file=f)
    assert (PIPELINES_DIR / "squad.yaml").is_file()

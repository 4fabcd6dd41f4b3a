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
    assert p.options["obert"] == {"block_size": 50, "num_grads": 1024, "grad_batch_size": 8, "damp": 1e-7}
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
    ({"export.qat_weights": "per_row"}, "qat_weights must be per_tensor or per_channel"),
    ({"export.calibration": "entropy"}, "export.calibration must be minmax or percentile-P"),
    ({"export.calibration": "percentile-abc"}, "export.calibration must be minmax or percentile-P"),
    ({"export.calibration": "percentile-120"}, "export.calibration must be minmax or percentile-P"),
    ({"export.calibration_examples": 0}, "calibration_examples"),
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


def test_a_pipeline_includes_a_shared_base(tmp_path):
    shared = tmp_path / "_shared.yaml"
    shared.write_text(
        "base:\n  seed: 3\n  data: {max_length: 99, doc_stride: 9}\nprofiles:\n  default:\n    prune: {lr: 1.0e-4, batch_size: 4}\n"  # noqa: E501 - one message/literal
    )
    (tmp_path / "mine.yaml").write_text(
        "task: rotten_tomatoes\ninclude: _shared.yaml\nbase:\n  data: {max_length: 64}\nprofiles:\n  default:\n    prune: {lr: 2.0e-4}\n"  # noqa: E501 - one message/literal
    )
    r = load_recipe("rotten_tomatoes", "default", recipe_file=tmp_path / "mine.yaml")
    assert (r.seed, r.data.max_length, r.data.doc_stride) == (3, 64, 9)  # included, then overridden key by key
    assert (r.prune.lr, r.prune.batch_size) == (2e-4, 4)
    shared.write_text("include: mine.yaml\nbase: {}\nprofiles: {default: {}}\n")
    with pytest.raises(UserError, match="include cycle"):
        load_recipe("rotten_tomatoes", "default", recipe_file=tmp_path / "mine.yaml")

"""The stage runner in process: a failing stage leaves nothing half-written; records cannot escape."""

import errno
import json

import pytest
import typer

from prune2deploy import cli
from prune2deploy.errors import UserError
from prune2deploy.files import inside
from prune2deploy.recipe import load_recipe
from prune2deploy.run import prepare_run_dir, read_record, run_stage


def test_disk_full_in_a_stage_leaves_no_half_stage(tmp_path, monkeypatch, capsys):
    import prune2deploy.stages.teacher as teacher

    def full_disk(ctx):
        (ctx.out / "model").mkdir()
        (ctx.out / "model" / "part.bin").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.out / "model" / "more.bin"))

    monkeypatch.setattr(teacher, "run", full_disk)
    recipe = load_recipe("rotten_tomatoes", "smoke")
    run_dir = tmp_path / "run"
    prepare_run_dir(recipe, run_dir)
    with pytest.raises(typer.Exit) as ex:
        cli._guard(lambda: run_stage("teacher", recipe, run_dir))
    assert ex.value.exit_code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--out" in err[0], err
    assert sorted(p.name for p in run_dir.iterdir()) == ["recipe.json"]  # no teacher/, no .teacher.tmp
    assert read_record(run_dir, "teacher") is None


def test_record_paths_cannot_escape_the_run_dir(tmp_path):
    (tmp_path / "run" / "prune" / "model").mkdir(parents=True)
    assert inside(tmp_path / "run", "prune/model") == (tmp_path / "run" / "prune" / "model").resolve()
    for bad in ("../outside", "prune/../../outside", "/etc"):
        with pytest.raises(UserError, match="outside"):
            inside(tmp_path / "run", bad)


def test_verify_refuses_a_manifest_model_outside_its_files(tmp_path):
    from prune2deploy.ship.verify import verify_artifact

    (tmp_path / "a.onnx").write_bytes(b"x")
    art = tmp_path / "art"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({"files": {}, "model": "../a.onnx"}))
    failure, _ = verify_artifact(art)
    assert failure and "not one of its hashed files" in failure


def test_a_corrupt_checkpoint_is_reported_not_silently_dropped(tmp_path, capsys):
    from prune2deploy.train.loop import load_checkpoint, save_checkpoint

    path = tmp_path / "prune.pt"
    save_checkpoint(path, {"tag": "mine", "step": 7})
    assert load_checkpoint(path, "mine")["step"] == 7 and capsys.readouterr().err == ""
    assert load_checkpoint(path, "another") is None
    assert "belongs to another run or config: starting again from step 0" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:40])  # torn
    assert load_checkpoint(path, "mine") is None
    err = capsys.readouterr().err
    assert "is unreadable" in err and "starting again from step 0" in err


def test_hub_errors_keep_their_message_and_say_network_only_when_it_is(monkeypatch):
    import datasets
    import pytest

    from prune2deploy.errors import UserError
    from prune2deploy.tasks.hub import load_hub

    def missing(*a, **k):
        raise FileNotFoundError("Dataset 'nope' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    with pytest.raises(UserError) as e:
        load_hub("nope", offline_hint="omit --data-dir")
    assert (
        str(e.value)
        == "cannot load 'nope' from the hub: FileNotFoundError: Dataset 'nope' doesn't exist on the Hub or cannot be accessed."  # noqa: E501 - one message/literal
    )

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'squad' on the Hub (ConnectionError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as e:
        load_hub("squad", offline_hint="omit --data-dir to use packaged data")
    assert str(e.value).startswith("cannot reach the hub for 'squad' (ConnectionError: Couldn't reach")
    assert str(e.value).endswith("offline, omit --data-dir to use packaged data")

"""Resumable experiment jobs: trained once, resumed after a stop, never twice."""

import json

import pytest

from minialexnet import backend, data, experiments


@pytest.fixture(autouse=True)
def numpy_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIALEXNET_CACHE", str(tmp_path / "cache"))
    yield
    backend.use("numpy")


CFG = dict(dataset="synthetic", model="fournet", model_kwargs={"widths": [4, 4, 8]},
           batch_size=32, epochs=3, checkpoint_every=0, workers=1, health_every=2)


def _sets():
    tr = data.load_dataset("synthetic", n=96, size=32)
    return experiments.split_train_val(tr, 32)


def test_split_is_disjoint_and_seeded():
    full = data.load_dataset("synthetic", n=50, size=32)
    a, b = experiments.split_train_val(full, 10, seed=3)
    a2, b2 = experiments.split_train_val(full, 10, seed=3)
    assert len(a) == 40 and len(b) == 10 and a.key != b.key
    assert (b.y == b2.y).all() and (b.x == b2.x).all()
    rows = {x.tobytes() for x in a.x}
    assert not any(x.tobytes() in rows for x in b.x)


def test_job_trains_once_and_writes_its_record(tmp_path):
    tr, val = _sets()
    job = experiments.Job("j", CFG)
    calls = []
    rec = experiments.run_job(job, tr, val, str(tmp_path / "res"), str(tmp_path / "runs"),
                              log=lambda *a: None, after=lambda t: calls.append(1) or {"x": 1})
    assert rec["status"] == "complete" and rec["epochs"] == 3 and rec["final"] == {"x": 1}
    on_disk = json.loads((tmp_path / "res" / "j.json").read_text())
    assert on_disk["status"] == "complete" and len(on_disk["history"]) == 3
    assert on_disk["health"] and on_disk["n_train"] == 64
    # A second call trains nothing and does not call ``after`` again.
    again = experiments.run_job(job, tr, val, str(tmp_path / "res"), str(tmp_path / "runs"),
                                log=lambda *a: None, after=lambda t: calls.append(1))
    assert again == on_disk and calls == [1]


def test_a_job_another_process_is_training_is_skipped_not_trained_twice(tmp_path):
    tr, val = _sets()
    job = experiments.Job("j", CFG)
    runs, res, said = tmp_path / "runs", tmp_path / "res", []
    with experiments.job_lock(str(runs / "j")) as mine:     # as another queue would hold it
        assert mine
        rec = experiments.run_job(job, tr, val, str(res), str(runs), log=said.append)
        assert rec is None and not (res / "j.json").exists()
        assert said == ["j: another process is training it; skipped"]
        with experiments.job_lock(str(runs / "j")) as second:
            assert not second
    rec = experiments.run_job(job, tr, val, str(res), str(runs), log=lambda *a: None)
    assert rec["status"] == "complete"                      # the lock was released


def test_a_job_finished_by_another_process_while_waiting_is_not_retrained(tmp_path, monkeypatch):
    import contextlib
    tr, val = _sets()
    done = {"name": "j", "status": "complete", "history": []}

    @contextlib.contextmanager
    def lock_after_the_other_finished(out):
        (tmp_path / "res").mkdir(exist_ok=True)
        (tmp_path / "res" / "j.json").write_text(json.dumps(done))   # it completed meanwhile
        yield True

    monkeypatch.setattr(experiments, "job_lock", lock_after_the_other_finished)
    rec = experiments.run_job(experiments.Job("j", CFG), tr, val, str(tmp_path / "res"),
                              str(tmp_path / "runs"), log=lambda *a: None,
                              after=lambda t: pytest.fail("trained a complete job"))
    assert rec == done


def test_an_interrupted_job_resumes_where_it_stopped(tmp_path):
    tr, val = _sets()
    straight = experiments.run_job(experiments.Job("a", CFG), tr, val, str(tmp_path / "r1"),
                                   str(tmp_path / "k1"), log=lambda *a: None)
    # Stop after epoch 1 (as a Ctrl-C or the end of a session would) ...
    class Boom(Exception):
        pass

    def stop_once(row):
        if row["epoch"] == 1:
            raise Boom
        return False
    with pytest.raises(Boom):
        experiments.run_job(experiments.Job("a", CFG, stop=stop_once), tr, val,
                            str(tmp_path / "r2"), str(tmp_path / "k2"), log=lambda *a: None)
    partial = experiments.load_record(str(tmp_path / "r2"), "a")
    assert partial is None or partial["status"] != "complete"
    # ... then run again: it continues from the checkpoint to the same end.
    said = []
    resumed = experiments.run_job(experiments.Job("a", CFG), tr, val, str(tmp_path / "r2"),
                                  str(tmp_path / "k2"), log=said.append)
    assert any("resumed at epoch 1" in s for s in said)
    assert sum(s.startswith("epoch ") for s in said) == 2          # epochs 2 and 3 only
    assert [r["train_loss"] for r in resumed["history"]] == \
        [r["train_loss"] for r in straight["history"]]


def test_stop_rule_ends_a_job_early_and_render_only_trains_nothing(tmp_path):
    tr, val = _sets()
    job = experiments.Job("s", CFG, stop=lambda row: row["epoch"] >= 2)
    none = experiments.run_job(job, tr, val, str(tmp_path / "r"), str(tmp_path / "k"),
                               log=lambda *a: None, train_missing=False)
    assert none is None and not (tmp_path / "k").exists()
    rec = experiments.run_job(job, tr, val, str(tmp_path / "r"), str(tmp_path / "k"),
                              log=lambda *a: None)
    assert rec["status"] == "complete" and rec["epochs"] == 2


def test_a_diverged_job_is_an_outcome_kept_with_its_health(tmp_path):
    """A rate that blows up is a sweep's result, not a crash: the record is complete,
    says where it diverged, and keeps the health records up to there."""
    tr, val = _sets()
    job = experiments.Job("d", dict(CFG, lr=1e6, health_every=1))
    rec = experiments.run_job(job, tr, val, str(tmp_path / "r"), str(tmp_path / "k"),
                              log=lambda *a: None)
    assert rec["status"] == "complete" and rec["diverged"]["step"] >= 1
    assert "nan" in rec["diverged"]["message"] or "inf" in rec["diverged"]["message"]
    assert len(rec["health"]) >= 1
    again = experiments.load_record(str(tmp_path / "r"), "d")
    assert again["diverged"] == rec["diverged"]


@pytest.mark.parametrize("pca", [False, True])
def test_a_job_trains_with_the_colour_noise_its_config_asks_for(tmp_path, monkeypatch, pca):
    """``pca=True`` in a job's config reaches the training transform (section 4.1),
    as it does for ``python -m minialexnet.train --pca``."""
    from minialexnet import train
    seen = []
    real = train.Trainer.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self.loader.transform.pca)
    monkeypatch.setattr(train.Trainer, "__init__", init)
    tr, val = _sets()
    experiments.run_job(experiments.Job("j", dict(CFG, epochs=1, pca=pca)), tr, val,
                        str(tmp_path / "res"), str(tmp_path / "runs"), log=lambda *a: None)
    assert len(seen) == 1 and (seen[0] is not None) == pca


def test_a_job_resumed_without_its_record_still_counts_the_checkpoints_epochs(tmp_path, monkeypatch):
    """A record lost while its checkpoint stayed: the time of the epochs the checkpoint
    holds is not dropped from train_seconds (it once reported 2 min for a 12 min run)."""
    import types
    tr, val = _sets()
    cfg = dict(CFG, epochs=2)

    def stop_after_1(row):
        return row["epoch"] == 1
    experiments.run_job(experiments.Job("a", cfg, stop=stop_after_1), tr, val, str(tmp_path / "r"),
                        str(tmp_path / "k"), log=lambda *a: None, figures=False)
    first = experiments.load_record(str(tmp_path / "r"), "a")["history"][0]
    (tmp_path / "r" / "a.json").unlink()
    # A clock that never moves: what is reported is then exactly what resuming carried over.
    monkeypatch.setattr(experiments, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))
    rec = experiments.run_job(experiments.Job("a", cfg), tr, val, str(tmp_path / "r"),
                              str(tmp_path / "k"), log=lambda *a: None, figures=False)
    assert rec["epochs"] == 2
    assert rec["train_seconds"] == pytest.approx(first["seconds"] + first["eval_seconds"]) and rec["train_seconds"] > 0

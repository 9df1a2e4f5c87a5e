"""evaluate and predict on bad checkpoints, bad options and many images: exit code 2
and one line for every mistake, batches for every image list, and a word on what
the model knows."""

import json

import numpy as np
import pytest
from PIL import Image

from minialexnet import backend, train
from minialexnet.checkpoint import FORMAT_KEY, META_KEY, load_checkpoint
from minialexnet.evaluate import main as evaluate_main
from minialexnet.predict import describe_classes, load_model, predict_files
from minialexnet.predict import main as predict_main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny trained run: (checkpoint path, a folder of 5 images)."""
    d = tmp_path_factory.mktemp("tools")
    cfg = train.default_config(dataset="synthetic", n_train=64, n_val=32, batch_size=32,
                               model="fournet", epochs=1, progress=False, workers=1,
                               checkpoint_every=0, out=str(d / "run"))
    t = train.run(cfg, log=lambda *a: None)
    for i in range(5):
        Image.fromarray(t.val_set.x[i]).save(d / f"{i}.png")
    backend.use("numpy")
    return t.last_good_checkpoint, d


def _images(d):
    return [str(d / f"{i}.png") for i in range(5)]


def _rewrite(src, dst, arrays=None, meta=None):
    """A copy of checkpoint ``src`` with arrays/meta changed, written WITHOUT
    save_checkpoint's refusals (as a crafted or damaged file would be)."""
    a, m = load_checkpoint(src)
    a = arrays(dict(a)) if arrays else a
    m = meta(json.loads(json.dumps(m))) if meta else m
    a[META_KEY] = np.frombuffer(json.dumps(m).encode(), np.uint8)
    a[FORMAT_KEY] = np.array(1)
    np.savez(dst, **a)
    return str(dst)


def _set(key, value):
    def f(d):
        d[key] = value
        return d
    return f


def _set_in(part, key, value):
    def f(m):
        m[part][key] = value
        return m
    return f


def _dtype(name, dtype):
    return lambda a: {**a, name: a[name].astype(dtype)}


def _poke(name, value):
    def f(a):
        w = a[name].copy()
        w.flat[3] = value
        return {**a, name: w}
    return f


def _drop(key):
    def f(m):
        del m[key]
        return m
    return f


BAD_CHECKPOINTS = {
    "NaN in fc4.W": (dict(arrays=_poke("model.fc4.W", np.nan)), "'model.fc4.W' holds 1 NaN"),
    "inf in conv1.W": (dict(arrays=_poke("model.conv1.W", np.inf)), "'model.conv1.W' holds 1 NaN or infinite"),
    "NaN in the mean image": (dict(arrays=_poke("data.mean", np.nan)), "'data.mean' holds 1 NaN"),
    "int weights": (dict(arrays=_dtype("model.fc4.W", np.int32)), "dtype int32; weights must be floating"),
    "bool weights": (dict(arrays=_dtype("model.conv2.b", bool)), "dtype bool"),
    "complex weights": (dict(arrays=_dtype("model.conv3.W", np.complex64)), "dtype complex64"),
    "a weight missing": (dict(arrays=lambda a: {k: v for k, v in a.items() if k != "model.fc4.b"}),
                         "'model.fc4.b' is missing"),
    "a weight of another shape": (dict(arrays=lambda a: {**a, "model.fc4.W": np.zeros((3, 3), np.float32)}),
                                  "'model.fc4.W' has shape \\(3, 3\\) in the checkpoint"),
    "no config": (dict(meta=_drop("config")), "not a training checkpoint"),
    "unknown model": (dict(meta=_set_in("model_config", "name", "resnet")), "unknown model 'resnet'"),
    "unknown model argument": (dict(meta=_set_in("model_config", "depth", 50)),
                               "does not describe a model .*depth"),
    "a billion classes": (dict(meta=_set_in("model_config", "num_classes", 10 ** 9)),
                          "fc4 alone would have"),
    "fractional classes": (dict(meta=_set_in("model_config", "num_classes", 2.5)),
                           "fc4: out_features must be an integer"),
    "class names too few": (dict(meta=lambda m: {**m, "class_names": m["class_names"][:3]}),
                            "3 class names for a model of 10 classes"),
    "class names not a list": (dict(meta=_set("class_names", "ring")), "class_names is not a list"),
    "image size a string": (dict(meta=_set_in("config", "image_size", "big")),
                            "config\\['image_size'\\] is 'big'"),
    "crop larger than the image": (dict(meta=_set_in("config", "crop", 64)),
                                   "crop 64 is larger than image_size 32"),
    "negative epoch": (dict(meta=_set("epoch", -1)), "epoch is -1"),
    "devices not numbers": (dict(meta=_set_in("model_config", "devices", ["gpu"])),
                            "devices'\\] is \\['gpu'\\]"),
}


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_tools_refuse_bad_checkpoints_in_one_line(run, tmp_path, capsys, case, tool):
    ckpt, d = run
    changes, words = BAD_CHECKPOINTS[case]
    bad = _rewrite(ckpt, tmp_path / "bad.npz", **changes)
    rc = evaluate_main([bad]) if tool == "evaluate" else predict_main([bad, _images(d)[0]])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert __import__("re").search(words, err), err
    assert out == ""


@pytest.mark.parametrize("tool", ["evaluate", "predict"])
@pytest.mark.parametrize("make,words", [
    (lambda p: None, "checkpoint file not found"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_text("weights"), "a text file, not a checkpoint"),
])
def test_tools_call_missing_files_missing(tmp_path, capsys, make, words, tool):
    p = tmp_path / "ck.npz"
    make(p)
    rc = evaluate_main([str(p)]) if tool == "evaluate" else predict_main([str(p), "x.png"])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "corrupt" not in err and err.count("\n") == 1


def test_extra_entries_are_never_read(run, tmp_path, monkeypatch):
    from minialexnet import checkpoint
    ckpt, _ = run
    big = _rewrite(ckpt, tmp_path / "big.npz",
                   arrays=lambda a: {**a, "junk": np.zeros(1 << 20, np.uint8)})
    read = []
    real = checkpoint._Reader.read
    monkeypatch.setattr(checkpoint._Reader, "read",
                        lambda self, name, stored=None: read.append(name) or real(self, name, stored))
    load_model(big)
    assert "junk" not in read and not any(n.startswith("optim.") for n in read)
    assert "data.mean" in read


OPTION_MISTAKES = [
    ("evaluate", ["--batch-size", "0"], "--batch-size: expected an integer >= 1, got '0'"),
    ("evaluate", ["--batch-size", "-5"], "--batch-size"),
    ("evaluate", ["--batch-size", "many"], "--batch-size"),
    ("evaluate", ["--n", "0"], "--n: expected an integer >= 1"),
    ("evaluate", ["--device", "-1"], "--device: expected an integer >= 0"),
    ("evaluate", ["--split", "validation"], "--split"),
    ("evaluate", ["--dataset", "mnist"], "--dataset"),
    ("predict", ["--top", "0"], "--top: expected an integer >= 1"),
    ("predict", ["--top", "2.5"], "--top"),
    ("predict", ["--batch-size", "0"], "--batch-size"),
    ("predict", ["--device", "x"], "--device"),
    ("predict", ["--top", "11"], "--top: 11, but the model knows only 10 classes"),
]


@pytest.mark.parametrize("tool,args,words", OPTION_MISTAKES)
def test_numeric_options_are_checked_naming_the_option(run, capsys, tool, args, words):
    ckpt, d = run
    main = evaluate_main if tool == "evaluate" else predict_main
    argv = [ckpt] + ([] if tool == "evaluate" else [_images(d)[0]]) + args
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: argument ") and err.count("\n") == 1
    assert words in err, err


def test_predict_runs_images_in_batches(run, capsys, monkeypatch):
    import minialexnet.inference as T
    ckpt, d = run
    sizes, real = [], T.predict_batches

    def spy(model, x, *a, **k):
        sizes.append(len(x))
        return real(model, x, *a, **k)
    monkeypatch.setattr(T, "predict_batches", spy)
    paths = _images(d) * 3                               # 15 images
    assert predict_main([ckpt, *paths, "--batch-size", "4"]) == 0
    assert sizes == [4, 4, 4, 3]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("this model knows 10 classes of the built-in shapes dataset "
                             "(synthetic): horizontal bar, vertical bar,")
    assert sum(line in paths for line in out) == 15
    model, meta, mean, std = load_model(ckpt)
    small = predict_files(model, meta, mean, paths, batch_size=4, std=std)
    large = predict_files(model, meta, mean, paths, batch_size=64, std=std)
    # the same images, labels and order; the probabilities to float32 rounding (a GEMM's
    # blocking, hence its last bits, may change with the batch size)
    assert [(p, [c for c, _ in top]) for p, top in small] == [(p, [c for c, _ in top]) for p, top in large]
    np.testing.assert_allclose([[q for _, q in top] for _, top in small],
                               [[q for _, q in top] for _, top in large], rtol=1e-5)


@pytest.mark.parametrize("dataset,n,words", [
    ("synthetic", 10, "10 classes of the built-in shapes dataset (synthetic): horizontal bar"),
    ("cifar10", 10, "10 classes of CIFAR-10: c0, c1"),
    ("imagenet-folder", 1000, "1000 classes of an ImageNet-style image folder: c0, "),
])
def test_predict_says_what_the_model_knows(dataset, n, words):
    names = [f"c{i}" for i in range(n)] if dataset != "synthetic" else \
        __import__("minialexnet").data.SYNTHETIC_CLASSES
    line = describe_classes({"class_names": list(names), "config": {"dataset": dataset}})
    assert line.startswith("this model knows " + words) and "\n" not in line
    assert ("(1000 in all)" in line) == (n == 1000)


def test_a_bad_image_among_many_is_named(run, tmp_path, capsys):
    ckpt, d = run
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    rc = predict_main([ckpt, *_images(d)[:2], str(tmp_path / "broken.png"),
                       str(tmp_path / "gone.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "broken.png: cannot decode image" in err and err.count("\n") == 1

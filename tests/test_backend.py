"""The backend, and proof on a GPU-less machine that layer code is NumPy/CuPy generic.

(a) no module but the backend imports numpy or cupy;
(b) every array function, Generator method and ndarray method the layers call,
    with its keywords, exists in the real cupy package (recorded on NumPy);
(c) on a machine with a GPU, CuPy output equals NumPy output for every layer.
"""

import ast
import os
import pathlib
import sys
import types

import numpy as np
import pytest

import minialexnet
from minialexnet import backend
from minialexnet.layers import (Conv2D, Dropout, Flatten, Linear, LocalResponseNorm,
                                MaxPool2D, ReLU, SoftmaxCrossEntropy, Tanh)

import cupy_surface

LIB = pathlib.Path(minialexnet.__file__).parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def import_cupy():
    """The real cupy package, which imports without a GPU; in CI its absence is a failure."""
    try:
        import cupy
        return cupy
    except ImportError as e:
        if IN_CI:
            pytest.fail(f"CI must install cupy-cuda12x for the API-surface test: {e}")
        pytest.skip(f"cupy not installed: {e}")


def gpu_count():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # ImportError, or CUDARuntimeError (a RuntimeError) with no driver
        return 0


@pytest.fixture(autouse=True)
def numpy_backend():
    backend.use("numpy", seed=0)
    yield
    backend.use("numpy", seed=0)


# ---------------------------------------------------------------- (a) imports
def imports_of(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module or ""
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                yield str(node.args[0].value)


def test_only_the_backend_imports_numpy_or_cupy():
    offenders = []
    for path in sorted(LIB.rglob("*.py")):
        if path == LIB / "backend.py":
            continue
        for name in imports_of(path):
            if name.split(".")[0] in ("numpy", "cupy"):
                offenders.append(f"{path.relative_to(LIB.parent)} imports {name}")
    assert not offenders, offenders


def test_import_scan_catches_an_import(tmp_path):
    f = tmp_path / "leak.py"
    f.write_text("import numpy as np\nfrom cupy import asarray\n")
    assert list(imports_of(f)) == ["numpy", "cupy"]


def name_comparisons(path):
    """Lines of ``path`` that compare something's ``.name`` with "numpy" or "cupy"."""
    def backend_name(node):
        if isinstance(node, ast.Constant):
            return node.value in ("numpy", "cupy")
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(map(backend_name, node.elts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "name" for s in sides) \
                    and any(map(backend_name, sides)):
                yield node.lineno


def test_behaviour_follows_what_the_backend_can_do_not_its_name():
    """Outside backend.py (whose factory picks NumPy or CuPy by name) no code asks
    for a backend's name: it asks what the backend can do."""
    offenders = [f"{path.relative_to(LIB.parent)}:{line}"
                 for path in sorted(LIB.rglob("*.py")) if path != LIB / "backend.py"
                 for line in name_comparisons(path)]
    assert not offenders, offenders


def test_name_scan_catches_a_comparison(tmp_path):
    f = tmp_path / "asks.py"
    f.write_text("a = b.name == 'cupy'\nc = backend.current().name in ('numpy', 'x')\n"
                 "d = step.name == layer\n")
    assert list(name_comparisons(f)) == [1, 2]


def test_the_training_log_s_gpus_come_from_the_backend():
    """train's "GPUs ..." line: what ``gpu_ids`` says, whatever the backend is called."""
    from minialexnet import train

    class StandIn(backend.Backend):
        def gpu_ids(self, devices):
            return [int(d) + 4 for d in devices]
    assert train._gpus([0, 1]) == "none"                      # NumPy: no GPUs
    backend.use(StandIn("stand-in", np))
    assert train._gpus([0, 1]) == [4, 5]


# ---------------------------------------------------------------- (b) API surface
def every_layer_forward_backward(x_img, x_vec, labels):
    """Forward and backward of every layer, in train and eval mode."""
    for layer in (Conv2D(3, 4, 3, stride=2, padding=1), Conv2D(3, 4, 5), ReLU(), Tanh(),
                  LocalResponseNorm(), MaxPool2D(3, 2), Dropout(0.5),
                  Dropout(0.5, inverted=True)):
        for mode in (True, False):
            layer.train(mode)
            y = layer.forward(x_img)
            layer.backward(y * 0 + 1)
    flat = Flatten()
    v = flat.forward(x_img)
    flat.backward(v)
    fc = Linear(x_vec.shape[1], 5)
    logits = fc.forward(x_vec)
    loss = SoftmaxCrossEntropy()
    loss.forward(logits, labels)
    fc.backward(loss.backward())


def test_layers_call_only_what_cupy_has():
    import_cupy()
    rec = cupy_surface.Recorder()
    backend.use(cupy_surface.recording_backend(rec))
    rng = np.random.default_rng(0)
    x_img = cupy_surface.as_recorded(rng.standard_normal((2, 3, 9, 9)).astype(np.float32))
    x_vec = cupy_surface.as_recorded(rng.standard_normal((4, 6)).astype(np.float32))
    labels = cupy_surface.as_recorded(np.array([0, 1, 4, 2]))
    every_layer_forward_backward(x_img, x_vec, labels)
    paths = {c[1] for c in rec.calls}
    # The recording really saw the layers' calls (else this test could not fail).
    assert {"matmul", "lib.stride_tricks.as_strided", "maximum", "random", "reshape"} <= paths
    problems = cupy_surface.check_against_cupy(rec)
    assert not problems, "\n".join(problems)


def test_surface_check_catches_the_known_traps():
    import_cupy()
    rec = cupy_surface.Recorder()
    b = backend.use(cupy_surface.recording_backend(rec))
    xp = b.xp
    x = cupy_surface.as_recorded(np.ones((2, 3), np.float32))
    xp.zeros(3, device="cpu")
    xp.clip(x, min=0)
    xp.reshape(x, shape=(3, 2))
    x.sum(where=x > 0)
    b.as_strided(x, (2,), (4,))
    np.lib.stride_tricks.as_strided(x, (2,), (4,), writeable=False)   # not via xp: unseen
    xp.lib.stride_tricks.as_strided(x, (2,), (4,), writeable=False)
    b.rng.normal(0, 1, 3)
    b.rng.permutation(3)
    problems = "\n".join(cupy_surface.check_against_cupy(rec))
    for trap in ("cupy.zeros", "cupy.clip", "cupy.reshape", "cupy.ndarray.sum",
                 "as_strided(<3 positional>, writeable)", "Generator.normal does not exist",
                 "Generator.permutation does not exist"):
        assert trap in problems, f"{trap!r} not caught in:\n{problems}"
    assert "as_strided(<3 positional>, )" not in problems


# ---------------------------------------------------------------- backend errors
def test_cupy_backend_fails_with_one_clear_line_without_gpu():
    if gpu_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(backend.BackendError) as e:
        backend.use("cupy")
    msg = str(e.value)
    assert msg.startswith("cupy backend:") and "\n" not in msg
    assert "not installed" in msg or msg.startswith("cupy backend: no usable NVIDIA GPU was found")


class _FakeCupy:
    """Just enough of a cupy module for _make_cupy: a runtime that fails or counts 0."""

    def __init__(self, outcome):
        def count():
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        self.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=count))


@pytest.mark.parametrize("outcome,cuda_says", [
    (RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                  "CUDA runtime version"), "cudaErrorInsufficientDriver"),
    (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), "cudaErrorNoDevice"),
    (RuntimeError("cudaErrorInitializationError: initialization error"), "initialization error"),
    (0, "CUDA reports no GPU"),
])
def test_no_gpu_is_said_first(monkeypatch, outcome, cuda_says):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy(outcome))
    with pytest.raises(backend.BackendError) as e:
        backend.use("cupy")
    msg = str(e.value)
    assert msg.startswith("cupy backend: no usable NVIDIA GPU was found (") and "\n" not in msg
    assert cuda_says in msg and "--backend numpy" in msg


def test_numpy_backend_rejects_other_devices():
    with pytest.raises(backend.BackendError, match="only device 0"):
        backend.use("numpy", devices=[0, 1])
    with pytest.raises(backend.BackendError, match="unknown backend 'tpu'"):
        backend.use("tpu")


def test_numpy_backend_device_and_transfers_are_noops():
    b = backend.use("numpy", seed=1)
    x = np.arange(6.0)
    with backend.device(0):
        assert backend.to_device(x, 0) is x
    assert backend.to_numpy(x) is x
    assert b.rng.random(3, dtype=np.float32).dtype == np.float32
    assert backend.dtype() == np.float32 and backend.xp() is np


# ---------------------------------------------------------------- (c) on a GPU
needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="no CUDA GPU on this machine")


@needs_gpu
@pytest.mark.parametrize("make", [
    lambda: Conv2D(3, 8, 3, stride=2, padding=1), lambda: Conv2D(3, 8, 11, stride=4),
    ReLU, Tanh, LocalResponseNorm, lambda: MaxPool2D(3, 2), lambda: MaxPool2D(3, 1),
    lambda: Dropout(0.5).eval(), Flatten])
def test_cupy_matches_numpy(make):
    import cupy
    x = np.random.default_rng(0).standard_normal((4, 3, 31, 29)).astype(np.float32)
    backend.use("numpy", seed=0)
    layer = make()
    params = {k: v.copy() for k, v in layer.params.items()}
    y = layer.forward(x)
    dx = layer.backward(y)
    grads = dict(layer.grads)
    backend.use("cupy", seed=0)
    glayer = make()
    glayer.training = layer.training
    glayer.params = {k: cupy.asarray(v) for k, v in params.items()}
    gy = glayer.forward(cupy.asarray(x))
    gdx = glayer.backward(gy)
    np.testing.assert_allclose(cupy.asnumpy(gy), y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(gdx), dx, rtol=1e-4, atol=1e-4)
    for k in grads:
        np.testing.assert_allclose(cupy.asnumpy(glayer.grads[k]), grads[k], rtol=1e-3, atol=1e-3)


@needs_gpu
def test_cupy_linear_loss_and_dropout_train_mode():
    import cupy
    backend.use("cupy", seed=0)
    x = cupy.asarray(np.random.default_rng(0).standard_normal((8, 20)).astype(np.float32))
    fc, loss, drop = Linear(20, 5), SoftmaxCrossEntropy(), Dropout(0.5)
    h = drop.forward(x)
    assert 0.3 < float((h != 0).mean()) < 0.7
    value = loss.forward(fc.forward(h), cupy.asarray([0, 1, 2, 3, 4, 0, 1, 2]))
    assert np.isfinite(float(value))
    drop.backward(fc.backward(loss.backward()))

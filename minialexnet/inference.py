"""Batched prediction and evaluation of a trained model (used by the command-line
tools, the Trainer's validation and the chapters).

    from minialexnet import data, inference
    logits = inference.predict_batches(model, images, data.EvalTransform(crop, mean))
    errors = inference.evaluate(model, test_set, crop, mean, ten_crop=True)  # {"top1", "top5"}

Everything runs the model in eval mode (dropout off, outputs scaled: paper 4.2) and
restores the mode it was in.
"""

import dataclasses

from . import backend, data
from .backend import np
from .checkpoint import check_compatible
from .metrics import ErrorMeter
from .models import describe

__all__ = ["predict_batches", "evaluate", "load_model_weights"]


def predict_batches(model, x, transform=None, batch_size=256, device=0):
    """Logits (host float32, (N, K)) of ``model`` in eval mode, ``batch_size`` at a time.

    x: uint8 NHWC images made into network input by ``transform``, or (transform None)
    float32 NCHW batches ready for the network."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size] if transform is None else transform(x[i:i + batch_size])
            xb = backend.to_device(backend.xp().asarray(xb, dtype=model.dtype), device)
            out.append(backend.to_numpy(model.forward(xb)))
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float32)


def evaluate(model, dataset, crop, mean=None, batch_size=256, ten_crop=False, device=0,
             std=None, comm=None):
    """Top-1 and top-5 error on ``dataset``: the centre crop, or the paper's ten-crop
    test (four corners, centre and their mirror images, softmax averaged; 4.1).
    ``mean``, ``std``: the input scaling the model was trained with (see prepare_data).
    ``comm`` (distributed): each rank evaluates its share and the counts are summed."""
    if comm is not None and comm.size > 1:
        lo, hi = comm.shard(len(dataset))
        dataset = dataclasses.replace(dataset, x=_rows(dataset.x, lo, hi), y=dataset.y[lo:hi])
    if ten_crop:
        def predict(x):
            return predict_batches(model, x, None, batch_size, device)
        # 1024 images at a time: their ten crops are ten float32 copies of the batch.
        scores = np.concatenate([
            data.ten_crop_predict(predict, dataset.x[i:i + 1024], crop, mean, std=std)
            for i in range(0, len(dataset), 1024)])
    else:
        scores = predict_batches(model, dataset.x, data.EvalTransform(crop, mean, std),
                                 batch_size, device)
    meter = ErrorMeter()
    meter.update(scores, dataset.y)
    if comm is not None and comm.size > 1:
        count, *correct = comm.sum_numbers([meter.count] + [meter.correct[k] for k in meter.ks])
        meter.count, meter.correct = int(count), {k: int(c) for k, c in zip(meter.ks, correct)}
    e = meter.errors()
    return {"top1": e[1], "top5": e[5]}


def _rows(x, lo, hi):
    """Rows lo..hi of images x: a view of an array; of lazy files, the files' slice."""
    if isinstance(x, np.ndarray):
        return x[lo:hi]
    return type(x)(x.paths[lo:hi], x.size, x.threads)


# ---------------------------------------------------------------- loading weights
def load_model_weights(model, arrays, meta, path):
    """Put a training checkpoint's ``model.*`` arrays into ``model``; a clear
    CheckpointError if they were saved for another architecture."""
    weights = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    check_compatible(weights, {k: v.shape for k, v in model.state_dict().items()}, path,
                     saved_arch=describe(meta.get("model_config")), model_arch=model.arch)
    model.load_state_dict(weights)

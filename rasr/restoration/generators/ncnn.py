"""Reader for ncnn models: the `.param` text graph and the `.bin` weights, into numpy.

Written from ncnn's docs (param-and-model-file-structure) and its ModelBin loader. A `.param` is

    7767517                                   magic
    999 1782                                  layer count, blob count
    Convolution Conv_0 1 1 data 703 0=64 1=3 6=1728 9=2 -23310=1,2.0e-01
    type        name   #in #out in.. out..   params: k=v; key -23300-k is an array for param k

and the `.bin` is the weights of each layer that has some, in layer order, with no header. A
Convolution stores its weight as a 4-byte tag (0x01306B47: fp16, padded to 4 bytes; 0: fp32; others
are int8 or quantised tables, which we refuse) and then its bias as raw fp32, untagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
# layers that carry no weights in the .bin; any type outside these and _LOADERS is refused
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "ReLU", "Sigmoid", "TanH",
              "Clip", "PixelShuffle", "Crop", "Reshape", "Permute", "Flatten", "Noop", "Dropout",
              "Pooling", "Softmax", "UnaryOp", "Slice", "Swish", "HardSigmoid", "HardSwish", "Mish", "GELU"}

Param = int | float | str | list


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Param]
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # "weight" (O, I, kh, kw), "bias" (O,)


@dataclass
class NcnnModel:
    param_path: str
    bin_path: str
    layers: list[Layer]
    blob_count: int

    def of_type(self, kind: str) -> list[Layer]:
        """Layers of one type, in file order."""
        return [layer for layer in self.layers if layer.type == kind]


def _value(text: str) -> int | float | str:
    # ncnn reads a value as float when it holds '.' or 'e', else as int
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse_params(tokens: list[str], where: str) -> dict[int, Param]:
    """`k=v` tokens -> {k: value}; array keys (-23300 - k) become {k: [values]}."""
    params: dict[int, Param] = {}
    for tok in tokens:
        key, sep, val = tok.partition("=")
        if not sep or not re.fullmatch(r"-?\d+", key):
            raise ValueError(f"{where}: bad parameter {tok!r}, expected key=value")
        k = int(key)
        if k <= -23300:
            count, *items = val.split(",")
            if int(count) != len(items):
                raise ValueError(f"{where}: array {tok!r} announces {count} values but holds {len(items)}")
            params[-k - 23300] = [_value(v) for v in items]
        else:
            params[k] = _value(val)
    return params


def read_param(path: str) -> tuple[list[Layer], int]:
    """Parse a `.param` text file into layers (no weights yet) and the declared blob count."""
    with open(path, encoding="utf-8") as f:
        lines = [line.split() for line in f if line.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise ValueError(f"{path} is not an ncnn text .param (first line must be {MAGIC})")
    if len(lines) < 2 or len(lines[1]) != 2:
        raise ValueError(f"{path}: second line must be '<layer count> <blob count>'")
    layer_count, blob_count = map(int, lines[1])
    if len(lines) - 2 != layer_count:
        raise ValueError(f"{path} declares {layer_count} layers but holds {len(lines) - 2}: file truncated?")
    layers = []
    for n, tok in enumerate(lines[2:], start=3):
        where = f"{path}:{n}"
        if len(tok) < 4:
            raise ValueError(f"{where}: layer line needs type, name, input and output counts")
        n_in, n_out = int(tok[2]), int(tok[3])
        blobs = tok[4:4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise ValueError(f"{where}: layer {tok[1]} lists fewer blobs than {n_in} + {n_out}")
        layers.append(Layer(tok[0], tok[1], blobs[:n_in], blobs[n_in:],
                            parse_params(tok[4 + n_in + n_out:], where)))
    return layers, blob_count


class _Reader:
    def __init__(self, data: bytes, path: str):
        self.data, self.pos, self.path = data, 0, path

    def take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise ValueError(f"{self.path} ends at byte {len(self.data)} while reading {what} "
                             f"({nbytes} bytes from {self.pos}): truncated .bin or wrong .param")
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def tagged(self, count: int, what: str) -> np.ndarray:
        """A weight blob with its 4-byte storage tag, as float32."""
        tag = int.from_bytes(self.take(4, f"{what} tag"), "little")
        if tag == TAG_FP16:
            raw = self.take((count * 2 + 3) // 4 * 4, what)  # padded to 4 bytes
            return np.frombuffer(raw, dtype="<f2", count=count).astype(np.float32)
        if tag == TAG_FP32:
            return np.frombuffer(self.take(count * 4, what), dtype="<f4").astype(np.float32)
        raise ValueError(f"{self.path}: {what} has storage tag 0x{tag:08X} (int8 or quantised weights); "
                         f"only fp32 and fp16 are supported: re-export the model without quantisation")

    def raw(self, count: int, what: str) -> np.ndarray:
        """Untagged fp32 values (biases)."""
        return np.frombuffer(self.take(count * 4, what), dtype="<f4").astype(np.float32)


def _load_convolution(layer: Layer, r: _Reader) -> None:
    p = layer.params
    what = f"{layer.type} {layer.name}"
    if p.get(8, 0):
        raise ValueError(f"{r.path}: {what} is int8-quantised (8={p[8]}): re-export in fp32 or fp16")
    if p.get(19, 0):
        raise ValueError(f"{r.path}: {what} has dynamic weights (19=1), which this reader does not support")
    out, size = int(p.get(0, 0)), int(p.get(6, 0))
    kw = int(p.get(1, 0))
    kh = int(p.get(11, kw))
    if out <= 0 or kw <= 0 or size % (out * kh * kw):
        raise ValueError(f"{r.path}: {what} weight_data_size {size} does not fit {out} x ? x {kh} x {kw}")
    layer.weights["weight"] = r.tagged(size, f"{what} weight").reshape(out, size // (out * kh * kw), kh, kw)
    if p.get(5, 0):
        layer.weights["bias"] = r.raw(out, f"{what} bias")


_LOADERS = {"Convolution": _load_convolution}


def load(param_path: str, bin_path: str) -> NcnnModel:
    """Parse a `.param`/`.bin` pair; every byte of the `.bin` must be consumed."""
    layers, blob_count = read_param(param_path)
    with open(bin_path, "rb") as f:
        r = _Reader(f.read(), bin_path)
    for layer in layers:
        if layer.type in _LOADERS:
            _LOADERS[layer.type](layer, r)
        elif layer.type not in WEIGHTLESS:
            raise ValueError(f"{param_path}: layer type {layer.type} ({layer.name}) is not supported by this reader")
    if r.pos != len(r.data):
        raise ValueError(f"{bin_path} has {len(r.data) - r.pos} bytes left after the last layer's weights: "
                         f"it does not belong to {param_path}")
    return NcnnModel(param_path, bin_path, layers, blob_count)

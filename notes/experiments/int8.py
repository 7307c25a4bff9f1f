"""Experiment, not product code: can int8 inference hold EfficientNet-Lite0's features? (issue 13)

Two routes, on the wallpapers of ../shared/datasets/wallpapers (106 images, half of them the calibration set):
  1. PyTorch's x86 PT2E flow (torchao's X86InductorQuantizer): reports whether it quantizes the pinned torch's
     exported graph at all.
  2. ONNX Runtime static quantization (QDQ, per-channel int8 weights, uint8 or int8 activations), the model exported
     by torch.onnx, against simlib's own fp32 and bf16 `Backbone.embed`.
Printed: ms per image at batch 8 on 2 threads, cosine of each image's features to fp32, and how many of each image's
5 nearest wallpapers stay the same.

Neither package is a simlib dependency; install them beside the venv first:
    .venv/bin/pip install --target build/int8-lib --no-deps torchao==0.18.0
    .venv/bin/pip install --target build/int8-lib onnxruntime==1.32.0 onnx   # then remove build/int8-lib/numpy*
    .venv/bin/python notes/experiments/int8.py
"""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.append(str(ROOT / "build" / "int8-lib"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from simlib.backbones import load_backbone  # noqa: E402
from simlib.images import load_image  # noqa: E402

WALLPAPERS = ROOT.parent / "shared" / "datasets" / "wallpapers"
BATCH = 8


def main() -> None:
    torch.set_num_threads(2)
    files = sorted(f for ext in ("jpg", "png", "webp") for f in WALLPAPERS.glob(f"*.{ext}"))
    fp32 = load_backbone("efficientnet_lite0", device="cpu", precision="fp32")
    bf16 = load_backbone("efficientnet_lite0", device="cpu", precision="bf16")
    images = torch.stack([fp32.preprocess(load_image(f, min_side=fp32.spec.input_size)) for f in files])
    reference = fp32.features(images)

    def normalised(batch: torch.Tensor) -> torch.Tensor:  # what Backbone.embed feeds the model, in NCHW order
        return fp32.model_input(batch).contiguous()

    def report(name: str, embed) -> None:
        out = np.concatenate([embed(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        cosine = np.einsum("ij,ij->i", out, reference)
        near, near_ref = np.argsort(-(out @ out.T))[:, 1:6], np.argsort(-(reference @ reference.T))[:, 1:6]
        agree = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(near, near_ref)])
        embed(images[:BATCH])
        started, n = time.perf_counter(), 0
        while time.perf_counter() - started < 5:
            embed(images[:BATCH])
            n += BATCH
        print(f"{name}: {(time.perf_counter() - started) / n * 1e3:.2f} ms/image; cosine to fp32 min {cosine.min():.4f}, "
              f"median {np.median(cosine):.4f}; 5 nearest agree {agree:.3f} ({len(out)} wallpapers)")

    model = load_backbone("efficientnet_lite0", device="cpu", precision="fp32").model.eval()
    calibration = [normalised(images[i : i + BATCH]) for i in range(0, len(images) - BATCH + 1, 2 * BATCH)]
    print(f"torch {torch.__version__}; {len(files)} wallpapers, {len(calibration) * BATCH} calibrate int8")
    _pt2e(model, calibration)
    _onnxruntime(model, calibration, normalised, report)
    report("simlib bf16 (Backbone.embed)", lambda b: bf16.embed(b).numpy())
    report("simlib fp32 (Backbone.embed)", lambda b: fp32.embed(b).numpy())


def _pt2e(model, calibration) -> None:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    try:
        prepared = prepare_pt2e(torch.export.export(model, (calibration[0],)).module(), quantizer)
        for batch in calibration:
            prepared(batch)
        converted = convert_pt2e(prepared)
    except Exception as exc:  # the result to report, whatever the library raises
        print(f"PT2E (torchao X86InductorQuantizer): failed: {type(exc).__name__}: {exc}")
        return
    quantized = sum("quantize" in str(node.target) for node in converted.graph.nodes)
    print(f"PT2E (torchao X86InductorQuantizer): {quantized} quantize/dequantize nodes in the converted graph")


def _onnxruntime(model, calibration, normalised, report) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch.numpy()}

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    with tempfile.TemporaryDirectory() as tmp:
        exported, prepared = f"{tmp}/fp32.onnx", f"{tmp}/prepared.onnx"
        torch.onnx.export(model.to(memory_format=torch.contiguous_format), (calibration[0],), exported,
                          input_names=["x"], output_names=["f"], dynamic_axes={"x": {0: "n"}, "f": {0: "n"}},
                          dynamo=False, opset_version=17)
        quant_pre_process(exported, prepared)
        models = {"ONNX Runtime fp32": exported}
        for activations in (QuantType.QUInt8, QuantType.QInt8):
            path = f"{tmp}/{activations.name}.onnx"
            quantize_static(prepared, path, Batches(), quant_format=QuantFormat.QDQ, activation_type=activations,
                            weight_type=QuantType.QInt8, per_channel=True)
            models[f"ONNX Runtime int8 ({activations.name} activations, per-channel int8 weights)"] = path
        for name, path in models.items():
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            report(name, lambda b, s=session: s.run(None, {"x": normalised(b).numpy()})[0])


if __name__ == "__main__":
    main()

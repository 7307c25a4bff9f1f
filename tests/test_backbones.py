import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from simlib import backbones
from simlib.backbones import (
    RESNET18,
    WeightsMismatchError,
    WeightsUnavailableError,
    load_backbone,
    resolve_weights,
)

from .conftest import needs_offline_backbone, scene


def test_resnet18_from_a_local_file_gives_512_unit_vectors(resnet18):
    features = resnet18.embed_images([scene(0), scene(1)])
    assert features.shape == (2, 512) and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert resnet18.name == "resnet18" and len(resnet18.weights_sha256) == 64


def test_weights_from_the_environment_variable(resnet18_weights, monkeypatch):
    monkeypatch.setenv(RESNET18.weights_env, str(resnet18_weights))
    assert resolve_weights(RESNET18) == resnet18_weights


def test_offline_without_weights_says_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.delenv(RESNET18.weights_env, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("resnet18")
    message = str(info.value)
    assert "--weights" in message and RESNET18.weights_env in message and "efficientnet_lite0" in message
    assert "resnet18-f37072fd.pth" in message and "Name or service not known" in message


def test_weights_in_the_torch_hub_cache_are_used(tmp_path, monkeypatch, resnet18_weights):
    monkeypatch.delenv(RESNET18.weights_env, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    cached = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    cached.write_bytes(resnet18_weights.read_bytes())
    assert resolve_weights(RESNET18, download=False) == cached


def test_missing_explicit_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_backbone("resnet18", tmp_path / "missing.pth")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_runs_code_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": _Exploit()}, handle)
    with pytest.raises(WeightsMismatchError, match="evil.pth"):
        load_backbone("resnet18", path)
    assert not (tmp_path / "PWNED").exists()


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"layer.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsMismatchError, match="does not fit resnet18"):
        load_backbone("resnet18", path)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="resnet18, efficientnet_lite0"):
        load_backbone("vgg16")


def test_preprocess_squashes_to_224_uint8():
    tensor = backbones.Preprocess(224)(Image.new("RGB", (1000, 100), (10, 20, 30)))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.uint8
    assert tensor[:, 0, 0].tolist() == [10, 20, 30]


def test_embed_rejects_float_batches(resnet18):
    with pytest.raises(ValueError, match="uint8"):
        resnet18.embed(torch.zeros(1, 3, 224, 224))


def test_resnet18_embeds_what_torchvision_gives_for_imagenet_normalised_input(resnet18, resnet18_weights):
    """`embed` against the reference written with torchvision's own pieces: ToTensor-style scaling, Normalize
    with the ImageNet mean and std, ResNet-18 without its classifier, then L2 normalisation."""
    from torchvision.models import resnet18 as torchvision_resnet18
    from torchvision.transforms import Normalize

    reference = torchvision_resnet18(weights=None)
    reference.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    reference.fc = torch.nn.Identity()
    batch = torch.stack([resnet18.preprocess(scene(seed)) for seed in range(3)])
    normalise = Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference.eval()(normalise(batch.float() / 255)), dim=1)
    assert torch.allclose(resnet18.embed(batch), expected, atol=1e-4)


@needs_offline_backbone
def test_efficientnet_lite0_gives_1280_unit_vectors(efficientnet):
    features = efficientnet.embed_images([scene(0)])
    assert features.shape == (1, 1280)
    assert np.isclose(np.linalg.norm(features), 1.0, atol=1e-5)


@needs_offline_backbone
def test_auto_falls_back_to_efficientnet_and_says_why(tmp_path, monkeypatch):
    monkeypatch.delenv(RESNET18.weights_env, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    backbone = load_backbone("auto", download=False, device="cpu")
    assert backbone.name == "efficientnet_lite0"
    assert "ResNet-18 weights are unavailable" in backbone.notice


def test_auto_prefers_resnet18_when_weights_exist(resnet18_weights):
    backbone = load_backbone("auto", resnet18_weights, device="cpu")
    assert backbone.name == "resnet18" and backbone.notice is None


def test_features_embed_a_large_batch_a_few_images_at_a_time_on_a_cpu(resnet18, monkeypatch):
    batch = torch.stack([resnet18.preprocess(scene(i)) for i in range(10)])
    whole = resnet18.embed(batch).numpy()
    seen = []
    monkeypatch.setattr(resnet18, "embed", lambda chunk, f=resnet18.embed: seen.append(len(chunk)) or f(chunk))
    chunked = resnet18.features(batch)
    assert seen == [backbones.CPU_MODEL_BATCH] * 2 + [10 - 2 * backbones.CPU_MODEL_BATCH]
    assert chunked.shape == (10, 512) and np.allclose(chunked, whole, atol=1e-5)


def test_the_backbone_names_the_cli_offers_are_the_backbones_there_are():
    from simlib.config import BACKBONE_NAMES

    assert BACKBONE_NAMES == tuple(backbones.BACKBONES)


def test_fp32_is_the_model_in_float32_and_reproduces_itself_exactly(resnet18_weights):
    fp32 = load_backbone("resnet18", resnet18_weights, device="cpu", precision="fp32")
    again = load_backbone("resnet18", resnet18_weights, device="cpu", precision="fp32")
    batch = torch.stack([fp32.preprocess(scene(seed)) for seed in range(2)])
    assert fp32.precision == "fp32" and next(fp32.model.parameters()).dtype == torch.float32
    assert torch.equal(fp32.embed(batch), again.embed(batch))


@needs_offline_backbone
def test_bf16_features_agree_with_fp32_within_the_measured_tolerance():
    """EfficientNet-Lite0 on the bundled photos: benchmarks/precision.py measured cosine >= 0.98 between the two
    precisions on 1,352 real photos; bf16 weights and inputs, float32 unit-norm output."""
    from .conftest import DATA

    fp32 = load_backbone("efficientnet_lite0", device="cpu", precision="fp32")
    bf16 = load_backbone("efficientnet_lite0", device="cpu", precision="bf16")
    images = [Image.open(p).convert("RGB") for p in sorted((DATA / "collection").glob("*.jpg"))[:8]]
    a, b = fp32.embed_images(images), bf16.embed_images(images)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    cosine = np.einsum("ij,ij->i", a, b)
    assert cosine.min() >= 0.98 and not np.array_equal(a, b)  # close, yet really computed in another precision


def test_auto_precision_takes_bf16_only_where_it_is_native_and_the_quality_holds(monkeypatch):
    cpu = torch.device("cpu")
    holds = backbones.BackboneSpec(**{**backbones.EFFICIENTNET_LITE0.__dict__, "bf16_holds_quality": True})
    fails = backbones.BackboneSpec(**{**backbones.EFFICIENTNET_LITE0.__dict__, "bf16_holds_quality": False})
    monkeypatch.setattr(backbones, "native_bf16", lambda device: True)
    assert backbones.resolve_precision(holds, "auto", cpu) == "bf16"
    assert backbones.resolve_precision(fails, "auto", cpu) == "fp32"
    monkeypatch.setattr(backbones, "native_bf16", lambda device: False)
    assert backbones.resolve_precision(holds, "auto", cpu) == "fp32"
    assert backbones.resolve_precision(holds, "bf16", cpu) == "bf16"  # asked for explicitly: emulated if need be
    with pytest.raises(ValueError, match="precision must be one of"):
        backbones.resolve_precision(holds, "fp16", cpu)

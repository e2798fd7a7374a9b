"""Backbones: the offline Lite checkpoint is the real ImageNet model, local weight files load (bad ones are
refused in one sentence), downloads go through a real loopback HTTP server and are cached."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pawsight import backbones
from pawsight.backbones import FeatureExtractor, create_backbone, download_weights, resolve, to_input
from pawsight.errors import PawsightError
from pawsight.images import Preprocessing

torch.set_num_threads(2)


def test_lite0_is_the_imagenet_model_and_sees_a_cat() -> None:
    from skimage.data import chelsea

    net, spec = create_backbone("efficientnet_lite0", keep_classifier=True)
    assert (spec.size, spec.mean, spec.std) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = Preprocessing(224)(Image.fromarray(chelsea()))[None]
    with torch.inference_mode():
        top5 = net(to_input(x, spec)).topk(5).indices[0].tolist()
    assert 281 <= top5[0] <= 285, top5  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_names_resolve_to_sources() -> None:
    assert resolve("efficientnet_lite2").size == 260
    assert resolve("resnet50").source == "torchvision"
    assert resolve("timm:convnext_tiny").source == "timm"
    with pytest.raises(PawsightError, match="unknown backbone 'no_such_net'"):
        resolve("no_such_net")
    with pytest.raises(PawsightError, match="timm has no model"):
        resolve("timm:no_such_net")


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def test_local_weights_file_safetensors_and_pth(tmp_path: Path, resnet18_state) -> None:
    from safetensors.torch import save_file

    st, pth = tmp_path / "r18.safetensors", tmp_path / "r18.pth"
    save_file({k: v.contiguous() for k, v in resnet18_state.items()}, str(st))
    torch.save({"state_dict": resnet18_state}, pth)  # a training checkpoint wrapper, tensors only
    net_a, spec_a = create_backbone("resnet18", weights=st)
    net_b, spec_b = create_backbone("resnet18", weights=pth)
    assert spec_a.num_features == 512
    assert spec_a.weights_hash == spec_b.weights_hash
    assert torch.equal(net_a.state_dict()["conv1.weight"], resnet18_state["conv1.weight"])
    # headless files (no classifier tensors) are fine too
    headless = tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in resnet18_state.items() if not k.startswith("fc.")},
              str(headless))
    assert create_backbone("resnet18", weights=headless)[1].weights_hash == spec_a.weights_hash


def test_bad_weight_files_are_one_sentence(tmp_path: Path, resnet18_state) -> None:
    import torchvision
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a tensor file" * 10)
    with pytest.raises(PawsightError, match="damaged or not a tensor file"):
        create_backbone("resnet18", weights=garbage)
    truncated = tmp_path / "truncated.pth"
    torch.save(resnet18_state, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(PawsightError, match="damaged or not a tensor file"):
        create_backbone("resnet18", weights=truncated)
    with pytest.raises(PawsightError, match="weights file not found"):
        create_backbone("resnet18", weights=tmp_path / "missing.pth")
    other = tmp_path / "r34.safetensors"
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet34(weights=None).state_dict().items()},
              str(other))
    with pytest.raises(PawsightError, match="do not fit backbone resnet18") as info:
        create_backbone("resnet18", weights=other)
    assert "\n" not in str(info.value)
    shapes = tmp_path / "shapes.safetensors"
    save_file({**{k: v.contiguous() for k, v in resnet18_state.items()}, "fc.weight": torch.zeros(3, 512),
               "fc.bias": torch.zeros(3)}, str(shapes))
    with pytest.raises(PawsightError, match="wrong shape"):
        create_backbone("resnet18", weights=shapes)


class _Server:
    """A loopback HTTP server serving `files` (name -> bytes) and counting requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        server = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests += 1
                body = files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path, resnet18_state) -> Iterator[tuple[_Server, str]]:
    path = tmp_path / "w.pth"
    torch.save(resnet18_state, path)
    body = path.read_bytes()
    name = f"resnet18-{hashlib.sha256(body).hexdigest()[:8]}.pth"  # torchvision's naming: sha256 prefix
    srv = _Server({name: body, "resnet18-deadbeef.pth": body})
    yield srv, name
    srv.httpd.shutdown()


def test_download_once_then_cached(tmp_path: Path, server) -> None:
    srv, name = server
    dest = tmp_path / "weights" / name
    assert download_weights(f"{srv.url}/{name}", dest) == dest
    assert download_weights(f"{srv.url}/{name}", dest) == dest
    assert srv.requests == 1 and dest.is_file()
    with pytest.raises(PawsightError, match="fail their checksum"):
        download_weights(f"{srv.url}/resnet18-deadbeef.pth", tmp_path / "weights" / "resnet18-deadbeef.pth")
    assert not (tmp_path / "weights" / "resnet18-deadbeef.pth").exists()
    with pytest.raises(PawsightError, match="--weights FILE"):
        download_weights(f"{srv.url}/nothing.pth", tmp_path / "weights" / "nothing.pth")


def test_named_model_downloads_into_the_cache(server, monkeypatch, resnet18_state) -> None:
    srv, name = server
    monkeypatch.setattr(backbones, "pretrained_url", lambda spec: f"{srv.url}/{name}")
    net, spec = create_backbone("resnet18")
    assert (backbones.weights_dir() / name).is_file()
    assert torch.equal(net.state_dict()["layer1.0.conv1.weight"], resnet18_state["layer1.0.conv1.weight"])
    create_backbone("resnet18")
    assert srv.requests == 1  # second build: offline, from the cache


def test_onnx_engine_matches_torch(tiny: Path) -> None:
    prep = Preprocessing(224)
    images = np.stack([prep.load(p) for p in sorted((tiny / "train" / "cats").iterdir())[:4]])
    net, spec = create_backbone("efficientnet_lite0")
    fast = FeatureExtractor(net, spec, engine="onnx")
    assert fast.engine == "onnx"
    a = fast(images)
    b = FeatureExtractor(net, spec, engine="torch")(images)
    assert a.shape == (4, 1280)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fast(images, flip=True), fast(images[:, :, ::-1]), rtol=1e-5, atol=1e-5)

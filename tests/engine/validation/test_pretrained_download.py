"""An empty MODEL.BACKBONE.PRETRAIN_PATH: the ImageNet file FastReID would download, found in the
torch hub cache or downloaded there through torch.hub (hash checked), served here by a local HTTP
server on 127.0.0.1; offline, one error naming the URL and where to put the file."""

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest
import torch

from kdreid.config import get_cfg
from kdreid.errors import ConfigError, WeightsError


class _Server:
    """http.server on 127.0.0.1 serving a folder, counting the requests it answered."""

    def __init__(self, folder):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _resnet18_cfg():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = ""
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A ResNet-18 state dict published as FastReID's URLs name files: ``name-<sha256[:8]>.pth``;
    and a copy under a name whose hash prefix is wrong."""
    from fastreid.modeling.backbones import build_backbone

    folder = tmp_path_factory.mktemp("published")
    cfg = _resnet18_cfg()
    cfg.MODEL.BACKBONE.PRETRAIN = False
    torch.manual_seed(0)
    state = build_backbone(cfg).state_dict()
    staging = folder / "staging.pth"
    torch.save(state, staging)
    name = f"resnet18-{_sha256(staging)[:8]}.pth"
    os.rename(staging, folder / name)
    (folder / "resnet18-00000000.pth").write_bytes((folder / name).read_bytes())
    server = _Server(folder)
    yield server, name, state
    server.close()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _publish_at(monkeypatch, url):
    from fastreid.modeling.backbones import resnet

    monkeypatch.setitem(resnet.model_urls, "18x", url)


def test_fastreid_s_url_for_the_config():
    from kdreid.engine.validation import pretrained_url

    cfg = _resnet18_cfg()
    assert pretrained_url(cfg) == "https://download.pytorch.org/models/resnet18-5c106cde.pth"
    cfg.MODEL.BACKBONE.DEPTH = "50x"
    cfg.MODEL.BACKBONE.WITH_IBN = True
    assert pretrained_url(cfg).endswith("/resnet50_ibn_a-d9d0bb7b.pth")
    cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_backbone"
    assert pretrained_url(cfg) is None


def test_downloaded_into_the_hub_cache_then_read_from_it(published, torch_home, monkeypatch):
    from kdreid.engine import Trainer, validation

    server, name, state = published
    _publish_at(monkeypatch, server.url(name))
    server.requests.clear()
    cfg = _resnet18_cfg()
    resolved = validation.check_pretrained(cfg)
    cached = torch_home / "hub" / "checkpoints" / name
    assert resolved.MODEL.BACKBONE.PRETRAIN_PATH == str(cached)
    assert cfg.MODEL.BACKBONE.PRETRAIN_PATH == ""  # the run's own config is left as written
    assert server.requests == [f"/{name}"] and _sha256(cached).startswith(name[9:17])
    assert [p.name for p in cached.parent.iterdir() if p.suffix == ".partial"] == []
    # the model is built from the downloaded weights, and a second build downloads nothing
    model = Trainer.build_model(cfg)
    assert server.requests == [f"/{name}"]
    torch.testing.assert_close(model.backbone.conv1.weight.detach(), state["conv1.weight"])


def test_fastreid_s_own_cache_is_used(published, torch_home, monkeypatch):
    from kdreid.engine import validation

    server, name, _ = published
    _publish_at(monkeypatch, server.url(name))
    server.requests.clear()
    own = torch_home / "checkpoints" / name  # where FastReID's gdown download puts it
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")  # found, then checked as any named file is
    with pytest.raises(WeightsError, match=str(own)):
        validation.check_pretrained(_resnet18_cfg())
    assert server.requests == []


def test_wrong_hash_is_refused_and_nothing_is_kept(published, torch_home, monkeypatch):
    from kdreid.engine import validation

    server, _, _ = published
    url = server.url("resnet18-00000000.pth")
    _publish_at(monkeypatch, url)
    with pytest.raises(WeightsError) as info:
        validation.check_pretrained(_resnet18_cfg())
    message = str(info.value)
    assert url in message and "is not the published file" in message
    assert 'invalid hash value (expected "00000000"' in message
    folder = torch_home / "hub" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["resnet18-00000000.pth.lock"]


def test_offline_is_one_error_naming_the_url_and_the_place(torch_home, monkeypatch):
    from kdreid.engine import validation

    with socket.socket() as probe:  # a port nothing listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resnet18-5c106cde.pth"
    _publish_at(monkeypatch, url)
    with pytest.raises(ConfigError) as info:
        validation.check_pretrained(_resnet18_cfg())
    message = str(info.value)
    destination = torch_home / "hub" / "checkpoints" / "resnet18-5c106cde.pth"
    assert f"cannot be downloaded from {url} (" in message and "refused" in message
    assert f"download it from {url} to {destination}" in message
    assert "\n" not in message and not destination.exists()


def test_missing_file_on_the_server_is_named(published, torch_home, monkeypatch):
    from kdreid.engine import validation

    server, _, _ = published
    url = server.url("resnet18-12345678.pth")
    _publish_at(monkeypatch, url)
    with pytest.raises(ConfigError, match=f"from {url} \\(HTTP 404 File not found\\)"):
        validation.check_pretrained(_resnet18_cfg())


def test_backbone_without_a_published_file(torch_home):
    from kdreid.engine import validation

    cfg = _resnet18_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_mobilenetv2_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "1.0x"
    with pytest.raises(ConfigError, match="no published file of ImageNet weights for MODEL"):
        validation.check_pretrained(cfg)

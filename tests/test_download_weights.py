"""tools/download_weights.py against a REAL local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tools import download_weights as dw

REPO = Path(__file__).resolve().parents[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture()
def server(tmp_path):
    """Serve tmp_path/www on an ephemeral port; yields (base_url, www dir, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []

    class Handler(_QuietHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _make_bundle(bundles_dir: Path, name: str, entries: list[dict]) -> Path:
    bdir = bundles_dir / name
    (bdir / "configs").mkdir(parents=True)
    (bdir / "configs" / "train.json").write_text('{"loss": {"network_type": "squeeze"}}')
    (bdir / "large_files.yml").write_text(yaml.safe_dump({"large_files": entries}))
    return bdir


@pytest.fixture()
def payload(server):
    """Two real files on the server: models/model.pt and models/vae.pt (release-like layout)."""
    base, www, requests = server
    rel = www / "releases" / "download" / "v0.1"
    rel.mkdir(parents=True)
    files = {"model.pt": os.urandom(3000), "vae.pt": os.urandom(1000)}
    for n, data in files.items():
        (rel / n).write_bytes(data)
    return base, www, requests, files


def _entries(base: str, files: dict[str, bytes], wrong: str | None = None) -> list[dict]:
    out = []
    for n, data in files.items():
        h = _sha256(data) if n != wrong else _sha256(b"something else")
        out.append({"path": f"models/{n}", "url": f"{base}/releases/download/v0.1/{n}", "hash_val": h, "hash_type": "sha256"})
    return out


def _run(tmp_path, **kw):
    kw.setdefault("features", "none")
    kw.setdefault("bundles_dir", tmp_path / "bundles")
    items, notes = dw.download_weights(**kw)
    return {f"{i.owner}/{i.path}": i for i in items}, notes


def test_success_then_already_present_skipped(tmp_path, payload):
    base, _, requests, files = payload
    bdir = _make_bundle(tmp_path / "bundles", "toy", _entries(base, files))
    items, _ = _run(tmp_path, bundle="toy")
    assert {i.status for i in items.values()} == {"downloaded"}
    for n, data in files.items():
        assert (bdir / "models" / n).read_bytes() == data
    assert sorted(requests) == ["/releases/download/v0.1/model.pt", "/releases/download/v0.1/vae.pt"]
    text, code = dw.report(list(items.values()), [])
    assert code == 0 and "OK: 2 file(s) in place" in text
    # second run: right hash already on disk -> skipped, no new HTTP request
    items, _ = _run(tmp_path, bundle="toy")
    assert {i.status for i in items.values()} == {"present"}
    assert len(requests) == 2


def test_wrong_hash_removes_file_and_names_it(tmp_path, payload):
    base, _, _, files = payload
    bdir = _make_bundle(tmp_path / "bundles", "toy", _entries(base, files, wrong="vae.pt"))
    items, _ = _run(tmp_path, bundle="toy")
    bad = items["toy/models/vae.pt"]
    assert bad.status == "failed"
    assert "hash check failed for vae.pt" in bad.message and "removed" in bad.message
    assert not (bdir / "models" / "vae.pt").exists()
    assert items["toy/models/model.pt"].status == "downloaded"
    text, code = dw.report(list(items.values()), [])
    assert code == 1 and str(bdir / "models" / "vae.pt") in text
    # an existing file with a wrong hash is replaced by the right one
    (bdir / "models" / "model.pt").write_bytes(b"corrupt")
    items, _ = _run(tmp_path, bundle="toy")
    assert items["toy/models/model.pt"].status == "downloaded"
    assert (bdir / "models" / "model.pt").read_bytes() == files["model.pt"]


def test_missing_file_404_and_offline_message(tmp_path, payload):
    base, _, _, files = payload
    entries = _entries(base, files)
    entries[1]["url"] = f"{base}/releases/download/v0.1/absent.pt"
    bdir = _make_bundle(tmp_path / "bundles", "toy", entries)
    items, _ = _run(tmp_path, bundle="toy")
    miss = items["toy/models/vae.pt"]
    assert miss.status == "failed" and "HTTP 404" in miss.message and "not be published yet" in miss.message
    assert not (bdir / "models" / "vae.pt").exists()
    text, code = dw.report(list(items.values()), [])
    assert code == 1
    assert "Download each by hand" in text and f"{base}/releases/download/v0.1/absent.pt" in text
    assert f"-> {bdir / 'models' / 'vae.pt'}" in text


def test_mirror_directory_and_http_mirror(tmp_path, payload):
    base, _, requests, files = payload
    # urls point to a host that does not exist: only the mirror can serve them
    entries = _entries("http://127.0.0.1:9/nowhere", files)
    _make_bundle(tmp_path / "bundles", "toy", entries)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for n, data in files.items():
        (mirror / n).write_bytes(data)
    items, _ = _run(tmp_path, bundle="toy", mirror=str(mirror), dest=str(tmp_path / "out"))
    assert {i.status for i in items.values()} == {"downloaded"}
    assert (tmp_path / "out" / "toy" / "models" / "model.pt").read_bytes() == files["model.pt"]
    assert all(i.source.startswith("file://") for i in items.values())
    # http mirror: same file names under another base URL
    items, _ = _run(tmp_path, bundle="toy", mirror=f"{base}/releases/download/v0.1/", dest=str(tmp_path / "out2"))
    assert {i.status for i in items.values()} == {"downloaded"}
    assert (tmp_path / "out2" / "toy" / "models" / "vae.pt").read_bytes() == files["vae.pt"]
    assert requests[-2:] == ["/releases/download/v0.1/model.pt", "/releases/download/v0.1/vae.pt"]


def test_dry_run_lists_without_downloading(tmp_path, payload):
    base, _, requests, files = payload
    bdir = _make_bundle(tmp_path / "bundles", "toy", _entries(base, files))
    items, _ = _run(tmp_path, bundle="all", dry_run=True)
    assert {i.status for i in items.values()} == {"would-download"}
    assert not (bdir / "models").exists() and requests == []
    text, code = dw.report(list(items.values()), [], dry_run=True)
    assert code == 0 and "DRY RUN" in text and f"{base}/releases/download/v0.1/model.pt" in text


def test_unreleased_weights_said_clearly(tmp_path, payload):
    base, _, requests, _ = payload
    entries = [{"path": "models/model.pt", "url": f"{base}/releases/download/v9/model.pt", "hash_val": "", "hash_type": "sha256"}]
    _make_bundle(tmp_path / "bundles", "toy", entries)
    items, _ = _run(tmp_path, bundle="toy")
    it = items["toy/models/model.pt"]
    assert it.status == "unreleased" and "not released yet" in it.message and requests == []
    text, code = dw.report(list(items.values()), [])
    assert code == 2 and "not released yet" in text


def test_feature_weights_go_to_torch_hub_checkpoints(tmp_path, payload, monkeypatch):
    base, www, _, _ = payload
    data = os.urandom(500)
    name = f"squeezenet_toy-{_sha256(data)[:8]}.pth"
    (www / name).write_bytes(data)
    (www / "bad-00000000.pth").write_bytes(data)
    fyml = tmp_path / "feature_weights.yml"
    fyml.write_text(
        yaml.safe_dump(
            {
                "feature_files": [
                    {"path": name, "url": f"{base}/{name}", "hash_prefix": _sha256(data)[:8], "config_tokens": ['"squeeze"']},
                    {"path": "bad-00000000.pth", "url": f"{base}/bad-00000000.pth", "hash_prefix": "00000000"},
                    {"path": "unused-1.pth", "url": f"{base}/unused-1.pth", "config_tokens": ['"nothing"']},
                ]
            }
        )
    )
    _make_bundle(tmp_path / "bundles", "toy", [])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    ckpt = tmp_path / "th" / "hub" / "checkpoints"
    assert dw.hub_checkpoint_dir() == ckpt
    items, _ = _run(tmp_path, bundle="toy", features="auto", feature_yml=fyml)
    assert list(items) == [f"feature-weights/{name}"]  # picked from the bundle config token only
    assert items[f"feature-weights/{name}"].status == "downloaded"
    assert (ckpt / name).read_bytes() == data
    items, _ = _run(tmp_path, bundle="toy", features="bad-00000000.pth", feature_yml=fyml)
    assert items["feature-weights/bad-00000000.pth"].status == "failed"
    assert "hash check failed for bad-00000000.pth" in items["feature-weights/bad-00000000.pth"].message
    assert not (ckpt / "bad-00000000.pth").exists()


def test_feature_yml_matches_torchvision_urls():
    """The files listed are exactly the ones torchvision (and so lpips/PerceptualLoss) load."""
    from torchvision.models import (
        AlexNet_Weights,
        Inception_V3_Weights,
        ResNet50_Weights,
        SqueezeNet1_1_Weights,
        VGG16_Weights,
    )

    entries = {e["path"]: e for e in yaml.safe_load((REPO / "tools" / "feature_weights.yml").read_text())["feature_files"]}
    for w in (SqueezeNet1_1_Weights, AlexNet_Weights, VGG16_Weights, Inception_V3_Weights, ResNet50_Weights):
        url = w.IMAGENET1K_V1.url
        e = entries[url.rsplit("/", 1)[1]]
        assert e["url"] == url and url.rsplit("-", 1)[1].startswith(e["hash_prefix"])


def test_cli_script_and_module_exit_codes(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "th")}
    # port 9 on loopback is closed: behaves like being offline
    _make_bundle(
        tmp_path / "bundles",
        "toy",
        [{"path": "models/model.pt", "url": "http://127.0.0.1:9/model.pt", "hash_val": "ab" * 32, "hash_type": "sha256"}],
    )
    common = ["--bundle", "all", "--bundles_dir", str(tmp_path / "bundles"), "--features", "none"]
    r = subprocess.run(
        [sys.executable, str(REPO / "tools" / "download_weights.py"), *common, "--dry_run"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "DRY RUN" in r.stdout and "http://127.0.0.1:9/model.pt" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "tools.download_weights", *common],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )
    assert r.returncode == 1
    assert "could not be placed" in r.stderr and str(tmp_path / "bundles" / "toy" / "models" / "model.pt") in r.stderr

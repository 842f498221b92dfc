"""Pre-trained weights without PyTorch (tinyvit.hub, tinyvit.official, tinyvit.pretrained).

No test reaches the network: the Hugging Face Hub is a cache folder built here in the
Hub's own layout and read with HF_HUB_OFFLINE=1, and Google's bucket is a small HTTP
server on 127.0.0.1. Where torch and timm are installed, timm's own models and exports
are the reference."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import threading

import numpy as np
import pytest
from safetensors.numpy import save_file

import tinyvit
from tinyvit import official
from tinyvit.checkpoint import CheckpointError
from tinyvit.hub import PretrainedError, hub_cache, split_name
from tinyvit.images import Preprocessing, cifar10_preprocessing
from tinyvit.interop import to_official
from tinyvit.labels import class_names, imagenet_classes
from tinyvit.pretrained import from_pretrained
from tinyvit.vit import ViT

REPO = "timm/vit_tiny_patch16_224.test_in1k"


def random_vit(seed=0, **changes) -> ViT:
    """A small ViT of timm's tiny width (192, 3 heads), every weight drawn at random."""
    settings = dict(image_size=32, patch_size=16, num_classes=5, dim=192, depth=2, heads=3,
                    mlp_dim=64)  # fmt: skip
    model = ViT(**{**settings, **changes})
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: rng.normal(0, 0.2, v.shape) for k, v in model.state_dict().items()})
    return model.eval()


def old_config(num_classes=5, **pretrained):
    """The form of the Hub's timm repositories: architecture plus pretrained_cfg."""
    cfg = {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 0.9,
           "mean": [0.5] * 3, "std": [0.5] * 3, "num_classes": num_classes}  # fmt: skip
    return {"architecture": "vit_tiny_patch16_224", "num_classes": num_classes,
            "num_features": 192, "global_pool": "token", "pretrained_cfg": {**cfg, **pretrained}}


def hub_repo(cache, repo, config, weights, sha="5c1f0ab3e2d4"):
    """A repository in the Hub's cache layout: refs/main names a snapshot holding the files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(sha)
    snapshot = folder / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    if weights is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()},
                  str(snapshot / "model.safetensors"))  # fmt: skip
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hub cache in tmp_path (HF_HUB_OFFLINE=1, HF_HUB_CACHE)."""
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def timm_or_skip():
    """torch and timm, or a skip: timm is a reference for tests only, and needs a
    torchvision built for the torch beside it (one built for another fails on import)."""
    try:
        import timm
        import torch
        import torchvision  # noqa: F401
    except Exception as error:  # not installed, or a torchvision that does not fit
        pytest.skip(f"timm with a working torchvision is not installed ({error})")
    return torch, timm


def images(seed=1, shape=(2, 3, 32, 32)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# the Hub, offline
# ---------------------------------------------------------------------------


def test_a_timm_repository_in_the_hub_cache_loads_offline(hub):
    source = random_vit()
    names = [f"n0144{i}" for i in range(5)]
    hub_repo(hub, REPO, {**old_config(), "label_names": names}, source.state_dict())
    model = from_pretrained(REPO)
    assert not model.training  # evaluation mode
    np.testing.assert_array_equal(model(images()).data, source(images()).data)
    assert model.config == source.config
    assert model.preprocessing == Preprocessing(32, (0.5,) * 3, (0.5,) * 3, 0.9, "bicubic")
    assert model.classes == tuple(names)
    again = tinyvit.create(REPO, pretrained=True)  # timm's spelling
    np.testing.assert_array_equal(again(images()).data, source(images()).data)
    for name in ("vit_tiny_patch16_224.test_in1k", f"hf-hub:{REPO}"):
        assert from_pretrained(name).config == source.config


def test_the_legacy_form_and_timms_newer_export(hub):
    source = random_vit(pool="mean", gelu="tanh", num_classes=1000)
    legacy = {"architecture": "vit_tiny_patch16_224", "num_classes": 1000,
              "input_size": [3, 32, 32], "mean": [0.4] * 3, "std": [0.2] * 3}  # fmt: skip
    hub_repo(hub, "timm/legacy.x", legacy, source.state_dict())
    model = from_pretrained("timm/legacy.x", pool="mean", gelu="tanh")
    np.testing.assert_array_equal(model(images()).data, source(images()).data)
    assert model.preprocessing.crop_pct == 0.875 and model.preprocessing.mean == (0.4,) * 3
    assert model.classes == imagenet_classes() and class_names(model)[0] == "tench"
    newer = {**old_config(1000), "model_args": {"num_heads": 3, "global_pool": "avg",
             "fc_norm": False, "act_layer": "gelu_tanh", "img_size": [32, 32]}}  # fmt: skip
    hub_repo(hub, "timm/newer.x", newer, source.state_dict())
    model = from_pretrained("timm/newer.x")  # the config says mean pooling and tanh GELU
    assert (model.config.pool, model.config.gelu) == ("mean", "tanh")
    np.testing.assert_array_equal(model(images()).data, source(images()).data)


def test_hf_home_and_default_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache() == tmp_path / "home" / "hub"
    assert split_name("vit_base_patch16_224") == (
        "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", None
    )
    assert split_name("timm/x.y@abc") == ("timm/x.y", "abc")
    source = random_vit()
    hub_repo(tmp_path / "home" / "hub", REPO, old_config(), source.state_dict())
    assert from_pretrained(REPO).config == source.config


def test_a_file_missing_while_offline_says_how_to_fetch_it(hub):
    hub_repo(hub, REPO, old_config(), None)  # config.json only
    with pytest.raises(PretrainedError, match=rf"{REPO}: model.safetensors is not in the "
                       rf"Hugging Face cache .*HF_HUB_OFFLINE is set.*`hf download {REPO}`"):
        from_pretrained(REPO)  # fmt: skip
    with pytest.raises(PretrainedError, match="timm/vit_small_patch16_224.augreg_in21k_ft_in1k: "
                       "config.json is not in the Hugging Face cache"):
        tinyvit.create("vit_small_patch16_224", pretrained=True)  # fmt: skip


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(architecture="deit_tiny_distilled_patch16_224", extra=["dist_token"]),
         r"a distillation token \(DeiT's distilled models\)"),
        (dict(architecture="swin_tiny_patch4_window7_224"),
         r"the architecture 'swin_tiny_patch4_window7_224' is not one of timm's plain Vision "
         "Transformers"),
        (dict(extra=["reg_token"]), r"register tokens"),
        (dict(extra=["blocks.0.ls1.gamma"]), r"LayerScale"),
        (dict(extra=["norm_pre.weight"]), r"a LayerNorm before the blocks"),
        (dict(extra=["fc_norm.weight"], drop=["norm.weight"]), r"after pooling \(fc_norm\)"),
        (dict(extra=["patch_embed.backbone.stem.conv.weight"]), r"a hybrid backbone"),
        (dict(extra=["blocks.0.attn.rel_pos_h"]), r"relative position embeddings"),
        (dict(drop=["cls_token"]), r"no class token"),
        (dict(model_args={"global_pool": "map"}), r"pooling by attention \(a MAP head\)"),
        (dict(model_args={"act_layer": "quick_gelu"}), r"the activation 'quick_gelu'"),
    ],
)  # fmt: skip
def test_a_layout_tinyvit_lacks_is_refused_by_name(hub, change, expected):
    weights = random_vit().state_dict()
    for key in change.get("extra", []):
        weights[key] = np.zeros((1, 1, 192), np.float32)
    for key in change.get("drop", []):
        del weights[key]
    config = old_config()
    config["architecture"] = change.get("architecture", config["architecture"])
    config["model_args"] = change.get("model_args", {})
    hub_repo(hub, REPO, config, weights)
    with pytest.raises(PretrainedError, match=rf"{REPO}: .* layout tinyvit does not build.*"
                       rf"{expected}|{REPO}: {expected}"):  # fmt: skip
        from_pretrained(REPO)


def test_a_wrong_shape_or_a_missing_key_is_named_with_its_file(hub):
    weights = random_vit().state_dict()
    weights["blocks.1.attn.qkv.weight"] = np.zeros((576, 191), np.float32)
    hub_repo(hub, REPO, old_config(), weights)
    with pytest.raises(PretrainedError, match=rf"{REPO}: the weights do not fit a ViT: .*"
                       r"blocks.1.attn.qkv.weight: expected shape \(576, 192\), got \(576, 191\)"):
        from_pretrained(REPO)  # fmt: skip
    weights = random_vit().state_dict()
    del weights["blocks.1.mlp.fc2.bias"]
    hub_repo(hub, "timm/missing.x", old_config(), weights)
    with pytest.raises(PretrainedError, match=r"timm/missing.x: .*missing keys: "
                       r"\['blocks.1.mlp.fc2.bias'\]"):  # fmt: skip
        from_pretrained("timm/missing.x")
    weights = random_vit().state_dict()
    weights["pos_embed"] = weights["pos_embed"][:, :3]
    hub_repo(hub, "timm/grid.x", old_config(), weights)
    with pytest.raises(PretrainedError, match=r"pos_embed has 3 positions, not 1 \+ 2 x 2"):
        from_pretrained("timm/grid.x")


def test_a_damaged_safetensors_file_is_named(hub):
    snapshot = hub_repo(hub, REPO, old_config(), random_vit().state_dict())
    data = (snapshot / "model.safetensors").read_bytes()
    (snapshot / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match=r"model.safetensors \(.* bytes\) is not a complete "
                       r"\.safetensors file"):  # fmt: skip
        from_pretrained(REPO)
    (snapshot / "config.json").write_text("{not json")
    with pytest.raises(PretrainedError, match=r"config.json is not a JSON configuration"):
        from_pretrained(REPO)


def test_a_failed_load_changes_no_model_in_memory(hub):
    source = random_vit()
    snapshot = hub_repo(hub, REPO, old_config(), source.state_dict())
    model = from_pretrained(REPO)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    logits = model(images()).data
    bad = source.state_dict()
    bad["head.weight"] = np.zeros((7, 192), np.float32)  # the head of another model
    bad["blocks.0.norm1.weight"] = np.full(192, np.nan, np.float32)
    save_file(bad, str(snapshot / "model.safetensors"))  # the same file, now bad
    with pytest.raises(PretrainedError):
        from_pretrained(REPO)
    with pytest.raises(ValueError, match="head.weight: expected shape"):
        model.load_state_dict(bad)  # nothing copied unless everything fits
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    np.testing.assert_array_equal(model(images()).data, logits)


def test_fine_tuning_options_a_new_head_and_a_rectangular_grid(hub):
    source = random_vit()
    weights = source.state_dict()
    hub_repo(hub, REPO, old_config(), weights)
    model = from_pretrained(REPO, num_classes=4, image_size=(32, 48), dropout=0.1)
    assert model.config.num_classes == 4 and model.config.image_size == (32, 48)
    assert model.config.dropout == 0.1 and model.classes is None
    assert model.pos_embed.shape == (1, 1 + 2 * 3, 192)
    assert model.preprocessing.image_size == (32, 48)
    assert np.all(model(images(shape=(1, 3, 32, 48))).data == 0)  # the zero-initialized head
    headless = {k: v for k, v in weights.items() if not k.startswith("head.")}
    hub_repo(hub, "timm/features.x", old_config(0), headless)
    with pytest.raises(PretrainedError, match=r"features.x has no classification head.*"
                       r"num_classes=K"):  # fmt: skip
        from_pretrained("timm/features.x")
    assert from_pretrained("timm/features.x", num_classes=1).config.num_classes == 1


# ---------------------------------------------------------------------------
# local paths
# ---------------------------------------------------------------------------


def test_local_files_of_every_kind(tmp_path):
    source = random_vit()
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(PretrainedError, match=r"model.safetensors needs the config.json it was "
                       "published with, beside it"):  # fmt: skip
        from_pretrained(tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(old_config()))
    for path in (tmp_path / "model.safetensors", tmp_path, str(tmp_path / "model.safetensors")):
        np.testing.assert_array_equal(from_pretrained(path)(images()).data,
                                      source(images()).data)  # fmt: skip
    source.classes = tuple("abcde")
    tinyvit.save(source, tmp_path / "mine.npz")
    mine = from_pretrained(tmp_path / "mine.npz")
    assert mine.classes == tuple("abcde") and mine.preprocessing == cifar10_preprocessing(32)
    wider = from_pretrained(tmp_path / "mine.npz", image_size=64)
    assert wider.preprocessing.image_size == 64 and wider.classes == tuple("abcde")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PretrainedError, match=r"notes.txt: expected a tinyvit checkpoint"):
        from_pretrained(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match=r"no model file at .*gone.npz"):
        from_pretrained(tmp_path / "gone.npz")
    with pytest.raises(PretrainedError, match="no pre-trained weights are published for "
                       "vit_cifar_tiny"):  # fmt: skip
        from_pretrained("vit_cifar_tiny")


def official_bytes(model) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **to_official(model))
    return buffer.getvalue()


def test_an_official_npz_by_path(tmp_path):
    source = random_vit(gelu="tanh", num_classes=1000)
    (tmp_path / "ViT-T_16.npz").write_bytes(official_bytes(source))
    model = from_pretrained(tmp_path / "ViT-T_16.npz")
    np.testing.assert_allclose(model(images()).data, source(images()).data, rtol=1e-5, atol=1e-5)
    assert not model.training and model.classes[:2] == ("tench", "goldfish")
    assert model.preprocessing.mean == (0.5,) * 3 and model.preprocessing.crop_mode == "squash"
    assert isinstance(PretrainedError("x"), CheckpointError)


# ---------------------------------------------------------------------------
# the official bucket, served from 127.0.0.1
# ---------------------------------------------------------------------------


class Bucket(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` as Google's bucket does: HEAD gives the size and ``x-goog-hash``,
    GET honours ``Range``. A path in ``cut`` is sent only halfway, once."""

    files: dict = {}
    md5: dict = {}  # what the headers claim (the true MD5 unless a test lies)
    cut: set = set()
    seen: list = []

    def log_message(self, *args):
        pass

    def _begin(self, status, body_length, path):
        self.send_response(status)
        self.send_header("Content-Length", str(body_length))
        digest = base64.b64encode(bytes.fromhex(self.md5[path])).decode()
        self.send_header("x-goog-hash", "crc32c=n03x6A==")
        self.send_header("x-goog-hash", f"md5={digest}")
        self.end_headers()

    def do_HEAD(self):
        self.seen.append(("HEAD", self.path, None))
        if self.path not in self.files:
            self.send_error(404)
            return
        self._begin(200, len(self.files[self.path]), self.path)

    def do_GET(self):
        asked = self.headers.get("Range")
        self.seen.append(("GET", self.path, asked))
        data = self.files[self.path]
        start = int(asked.split("=")[1].rstrip("-")) if asked else 0
        self._begin(206 if asked else 200, len(data) - start, self.path)
        body = data[start:]
        if self.path in self.cut:
            self.cut.discard(self.path)
            body = body[: len(body) // 2]  # and the connection closes
        self.wfile.write(body)


@pytest.fixture
def bucket(monkeypatch):
    Bucket.files, Bucket.md5, Bucket.cut, Bucket.seen = {}, {}, set(), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bucket)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(official, "OFFICIAL_URL", f"http://127.0.0.1:{server.server_port}/")
    yield Bucket
    server.shutdown()
    server.server_close()


def serve(bucket, key, data, md5=None):
    bucket.files[f"/{key}.npz"] = data
    bucket.md5[f"/{key}.npz"] = md5 or hashlib.md5(data).hexdigest()


def test_an_official_checkpoint_by_name_resumes_after_a_cut(tmp_path, bucket):
    source = random_vit(gelu="tanh", num_classes=1000)
    data = official_bytes(source)
    serve(bucket, "imagenet21k+imagenet2012/ViT-B_16", data)
    bucket.cut.add("/imagenet21k+imagenet2012/ViT-B_16.npz")
    with pytest.raises(PretrainedError, match=r"stopped after [\d,]+ of [\d,]+ bytes; .*\.part "
                       "is kept and the next try resumes"):  # fmt: skip
        from_pretrained("ViT-B/16", cache_dir=tmp_path, progress=False)
    model = from_pretrained("ViT-B/16", cache_dir=tmp_path, progress=False)  # the paper's name
    half = len(data) - (len(data) - len(data) // 2)
    assert ("GET", "/imagenet21k+imagenet2012/ViT-B_16.npz", f"bytes={half}-") in bucket.seen
    np.testing.assert_allclose(model(images()).data, source(images()).data, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "imagenet21k+imagenet2012" / "ViT-B_16.npz").read_bytes() == data
    bucket.files.clear()  # the bucket gone: the kept file and its record suffice
    again = tinyvit.create("imagenet21k+imagenet2012/ViT-B_16", pretrained=True,
                           cache_dir=tmp_path)  # fmt: skip
    assert again.config == model.config


def test_a_bad_checksum_is_refused_and_set_aside(tmp_path, bucket):
    data = official_bytes(random_vit(gelu="tanh"))
    serve(bucket, "imagenet21k/ViT-B_32", data, md5="0" * 32)
    with pytest.raises(PretrainedError, match=r"MD5 [0-9a-f]{32} where 0{32} was expected.*"
                       r"moved aside to .*ViT-B_32.npz.bad-"):  # fmt: skip
        official.download_official("imagenet21k/ViT-B_32", tmp_path, progress=False)
    assert not (tmp_path / "imagenet21k" / "ViT-B_32.npz").exists()
    assert list((tmp_path / "imagenet21k").glob("ViT-B_32.npz.bad-*"))
    with pytest.raises(PretrainedError, match=r"ViT-L_32.npz does not exist \(404\)"):
        official.download_official("imagenet21k/ViT-L_32", tmp_path, progress=False)
    with pytest.raises(PretrainedError, match="R50\\+ViT-B_16 is a hybrid"):
        from_pretrained("imagenet21k/R50+ViT-B_16")
    assert official.official_key("augreg/B_16-i21k-300ep--imagenet2012-res_224.npz") == (
        "augreg/B_16-i21k-300ep--imagenet2012-res_224"
    )


# ---------------------------------------------------------------------------
# timm itself, where it is installed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options",
    [
        ("vit_tiny_patch16_224", dict(depth=2, img_size=64)),
        ("vit_small_patch16_224", dict(depth=1, img_size=(48, 80), global_pool="avg",
                                       fc_norm=False)),
        ("deit_tiny_patch16_224", dict(depth=2)),
        ("vit_base_patch32_224", dict(depth=1, act_layer="gelu_tanh")),
    ],
)  # fmt: skip
def test_timms_export_gives_timms_logits(hub, name, options):
    """timm's own export (save_for_hf: config.json with model_args, model.safetensors) in the
    Hub's cache layout, loaded offline: the same logits as timm, float32, relative 1e-4."""
    torch, timm = timm_or_skip()
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, **options).eval()
    export = hub / "export"
    save_for_hf(reference, export, safe_serialization=True)
    repo = f"timm/{name}.test"
    hub_repo(hub, repo, json.loads((export / "config.json").read_text()), None)
    snapshot = next((hub / f"models--timm--{name}.test" / "snapshots").iterdir())
    (export / "model.safetensors").rename(snapshot / "model.safetensors")
    model = from_pretrained(repo)
    H, W = reference.patch_embed.img_size
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        expected = reference(x).numpy()
    got = model(x.numpy()).data
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_a_photo_through_timm_and_through_tinyvit(hub):
    """grace_hopper.jpg, prepared by timm's transform and by tinyvit.prepare, through the
    same weights: the same logits."""
    torch, timm = timm_or_skip()
    from matplotlib import cbook
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", depth=2).eval()
    save_for_hf(reference, hub / "export", safe_serialization=True)
    model = from_pretrained(hub / "export")
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    transform = create_transform(**resolve_data_config({}, model=reference))
    with torch.no_grad():
        expected = reference(transform(Image.open(path).convert("RGB"))[None]).numpy()
    got = model(tinyvit.prepare(path, model)).data
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

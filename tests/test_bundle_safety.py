"""edgecls.runtime.bundle: bundles stay inside themselves; .tar loads leak nothing and no file name leads outside."""

import io
import json
import os
import shutil
import tarfile
import tempfile
import time

import pytest

from edgecls.runtime.bundle import Bundle, BundleError, bundle_cache_dir, load_bundle, sha256_file
from edgecls.runtime.classifier import Classifier


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private bundle cache and a private temp dir, both watched for leftovers."""
    monkeypatch.setenv("EDGECLS_BUNDLE_CACHE", str(tmp_path / "cache"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp_path / "cache", tmp


def _listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def _tar_of(folder, target, arcname="bundle"):
    with tarfile.open(target, "w") as tar:
        tar.add(folder, arcname=arcname)
    return target


# -- point 9: .tar bundles ------------------------------------------------------------------------


def test_tar_loads_reuse_one_cache_folder_and_leave_no_temp_dirs(tiny_bundle, cache):
    cache_dir, tmp = cache
    tar = tiny_bundle.with_name("tiny-bundle.tar")
    assert bundle_cache_dir() == cache_dir
    roots = {load_bundle(tar).root for _ in range(5)}
    assert Classifier(tar).artifact.name == "tflite-int8"
    assert len(roots) == 1
    assert _listing(cache_dir) == [sha256_file(tar)]  # one folder, named by the archive's content
    assert _listing(tmp) == []
    assert load_bundle(tar).manifest.to_dict() == load_bundle(tiny_bundle).manifest.to_dict()


def test_refused_archives_leave_nothing_behind(tiny_bundle, cache, tmp_path):
    cache_dir, tmp = cache
    data = tiny_bundle.with_name("tiny-bundle.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.tar").write_bytes(b"this is no tar archive" * 100)
    no_manifest = tmp_path / "nomanifest"
    (no_manifest / "inner").mkdir(parents=True)
    (no_manifest / "inner" / "labels.txt").write_text("a\n")
    _tar_of(no_manifest, tmp_path / "nomanifest.tar")
    for _ in range(3):
        for name, message in (
            ("cut.tar", "cannot read bundle archive"),
            ("junk.tar", "cannot read bundle archive"),
            ("nomanifest.tar", "is not a bundle"),
        ):
            with pytest.raises(BundleError, match=message) as exc_info:
                load_bundle(tmp_path / name)
            _one_line(exc_info)
    assert _listing(cache_dir) == [] and _listing(tmp) == []


def test_a_new_archive_clears_stale_interrupted_unpacks(tiny_bundle, cache):
    cache_dir, _ = cache
    stale, fresh = cache_dir / ".0123456789abcdef.x1.partial", cache_dir / ".0123456789abcdef.x2.partial"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    load_bundle(tiny_bundle.with_name("tiny-bundle.tar"))
    assert not stale.exists() and fresh.exists()  # a fresh one may be another process still unpacking


# -- point 15: names that lead outside ---------------------------------------------------------


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    copy = tmp_path / "work" / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def _set_artifact_file(bundle, name, new_file):
    manifest = json.loads((bundle / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        if artifact["name"] == name:
            artifact["file"] = new_file
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["parent", "absolute", "subfolder", "backslash", "dotdot", "empty"])
def test_artifact_names_outside_the_bundle_are_refused_on_load(bundle_copy, where):
    outside = bundle_copy.parent / "outside.tflite"
    shutil.copy(bundle_copy / "model_int8.tflite", outside)  # same bytes: the sha256 check alone would pass
    (bundle_copy / "sub").mkdir()
    shutil.copy(outside, bundle_copy / "sub" / "model.tflite")
    name = {
        "parent": "../outside.tflite",
        "absolute": str(outside),
        "subfolder": "sub/model.tflite",
        "backslash": "..\\outside.tflite",
        "dotdot": "..",
        "empty": "",
    }[where]
    _set_artifact_file(bundle_copy, "tflite-int8", name)
    with pytest.raises(BundleError, match="not a plain file name inside the bundle") as exc_info:
        load_bundle(bundle_copy)
    assert repr(name) in _one_line(exc_info) and "tflite-int8" in str(exc_info.value)
    with pytest.raises(BundleError, match="not a plain file name inside the bundle"):
        Classifier(bundle_copy, artifact="tflite-int8")


def test_verify_refuses_a_bad_name_in_a_manifest_built_in_code(bundle_copy):
    bundle = load_bundle(bundle_copy)
    artifact = bundle.artifact("tflite-int8")
    shutil.copy(bundle_copy / artifact.file, bundle_copy.parent / "outside.tflite")
    bad = type(artifact)(**{**artifact.__dict__, "file": "../outside.tflite"})
    with pytest.raises(BundleError, match="not a plain file name") as exc_info:
        Bundle(bundle.root, bundle.manifest).verify(bad)
    _one_line(exc_info)


def test_other_bundle_files_must_be_plain_names_too(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["../labels.txt"] = manifest["files"].pop("labels.txt")
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="the files list names the file '../labels.txt'") as exc_info:
        load_bundle(bundle_copy)
    _one_line(exc_info)


def test_a_symlink_leaving_the_bundle_is_refused_on_verify(bundle_copy):
    outside = bundle_copy.parent / "outside.tflite"
    shutil.move(bundle_copy / "model_int8.tflite", outside)
    (bundle_copy / "model_int8.tflite").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle") as exc_info:
        Classifier(bundle_copy, artifact="tflite-int8")
    _one_line(exc_info)
    # a link that stays inside the bundle is fine
    (bundle_copy / "model_int8.tflite").unlink()
    shutil.move(outside, bundle_copy / "real.tflite")
    (bundle_copy / "model_int8.tflite").symlink_to("real.tflite")
    assert Classifier(bundle_copy, artifact="tflite-int8").artifact.name == "tflite-int8"


def test_an_archive_whose_manifest_points_outside_is_refused_and_not_cached(bundle_copy, cache, tmp_path):
    cache_dir, tmp = cache
    _set_artifact_file(bundle_copy, "tflite-int8", "../outside.tflite")
    tar = _tar_of(bundle_copy, tmp_path / "evil.tar")
    with pytest.raises(BundleError, match="not a plain file name") as exc_info:
        load_bundle(tar)
    _one_line(exc_info)
    assert _listing(cache_dir) == [] and _listing(tmp) == []


def _evil_tar(path, kind):
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("bundle/manifest.json")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"{}"))
        if kind in ("parent", "nested-parent", "absolute"):
            name = {
                "parent": "../evil.txt",
                "nested-parent": "bundle/../../evil.txt",
                "absolute": str(path.parent / "abs-evil.txt"),
            }[kind]
            member = tarfile.TarInfo(name)
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
        else:
            member = tarfile.TarInfo("bundle/model.tflite")
            member.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            member.linkname = str(path.parent / "secret.txt") if kind == "symlink" else "../secret.txt"
            tar.addfile(member)
    return path


@pytest.mark.parametrize("python_has_data_filter", [True, False])
@pytest.mark.parametrize("kind", ["parent", "nested-parent", "absolute", "symlink", "hardlink"])
def test_tar_members_escaping_the_bundle_are_refused(cache, tmp_path, monkeypatch, kind, python_has_data_filter):
    cache_dir, tmp = cache
    if not python_has_data_filter:  # as on Raspberry Pi OS Bookworm's Python 3.11.2
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    (tmp_path / "secret.txt").write_text("secret")
    tar = _evil_tar(tmp_path / "evil.tar", kind)
    with pytest.raises(BundleError, match="unsafe member") as exc_info:
        load_bundle(tar)
    _one_line(exc_info)
    assert sorted(p.name for p in tmp_path.rglob("*evil*")) == ["evil.tar"]
    assert _listing(cache_dir) == [] and _listing(tmp) == []


def test_the_temp_dir_cache_fallback_refuses_a_folder_others_can_write(tmp_path):
    """Without a home directory the cache lives in the shared temp dir: a planted folder must not be trusted."""
    import os

    from edgecls.runtime.bundle import BundleError, _private_temp_dir

    mine = _private_temp_dir(tmp_path / "edgecls-mine")
    assert mine.is_dir() and (mine.stat().st_mode & 0o777) == 0o700
    planted = tmp_path / "edgecls-planted"
    planted.mkdir()
    os.chmod(planted, 0o777)
    with pytest.raises(BundleError, match="not a private folder"):
        _private_temp_dir(planted)
    (tmp_path / "edgecls-link").symlink_to(mine)
    with pytest.raises(BundleError, match="not a private folder"):
        _private_temp_dir(tmp_path / "edgecls-link")

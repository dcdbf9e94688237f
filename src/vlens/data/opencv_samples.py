"""Real test images from Debian's ``opencv-doc`` package, fetched once into the vlens cache.

The package (about 95 MB) ships OpenCV's sample data under ``usr/share/doc/opencv-doc/examples/data/``: real
photos, the Oxford *graffiti* viewpoint pair (``graf1.png``, ``graf3.png``) with its ground-truth homography
``H1to3p.xml`` (OpenCV convention: pixel centres at integer coordinates), and the Middlebury *aloe* stereo pair
(``aloeL.jpg``, ``aloeR.jpg``) with ``aloeGT.png``, the left image's disparity in pixels (scale 1, 0 = unknown).

:func:`fetch_opencv_samples` runs ``apt-get download opencv-doc`` (no install, no root needed beyond apt's
own cache) or takes a ``.deb`` you already have, streams the package's file tree through ``dpkg-deb
--fsys-tarfile`` and keeps only the images and the homography (about 20 MB), written into
``$VLENS_CACHE/opencv-samples`` atomically (a temporary folder renamed at the end). Everything that needs these
images asks :func:`opencv_samples_dir`, which raises one clear line when they are not there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from vlens.data.cache import cache_dir
from vlens.errors import DatasetError

PACKAGE = "opencv-doc"
PACKAGE_DATA = "usr/share/doc/opencv-doc/examples/data/"
KEEP_SUFFIXES = (".jpg", ".png")
KEEP_FILES = ("H1to3p.xml",)
MARKER = "SOURCE.txt"

# 12 real photos with objects and structure: the default images of the crop benchmark (held out from training).
HELDOUT_PHOTOS = ("baboon.jpg", "building.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "messi5.jpg",
                  "orange.jpg", "apple.jpg", "aero1.jpg", "basketball1.png", "squirrel_cls.jpg", "starry_night.jpg")
# Real photos that may be used for training: none of the above, no near-duplicate of them (aero3, basketball2 are
# the next frames of aero1 / basketball1) and none of the ground-truth pairs (graf*, aloe*).
TRAIN_PHOTOS = ("smarties.png", "HappyFish.jpg", "board.jpg", "box_in_scene.png", "cards.png", "chicky_512.png",
                "ela_original.jpg", "rubberwhale1.png", "stuff.jpg", "Blender_Suzanne1.jpg", "leuvenA.jpg",
                "licenseplate_motion.jpg", "pic1.png", "notes.png", "left01.jpg", "templ.png")
PAIR_FILES = ("graf1.png", "graf3.png", "H1to3p.xml", "aloeL.jpg", "aloeR.jpg", "aloeGT.png")


def samples_root() -> Path:
    return cache_dir() / "opencv-samples"


def is_available() -> bool:
    return (samples_root() / MARKER).is_file()


def opencv_samples_dir() -> Path:
    """The folder of the fetched images; a one-line :class:`DatasetError` saying how to get them otherwise."""
    root = samples_root()
    if not (root / MARKER).is_file():
        raise DatasetError(f"the OpenCV sample images are not in {root}; run `vlens data fetch opencv-samples` "
                           "(needs apt-get on a Debian-family machine, or --deb FILE with a downloaded "
                           "opencv-doc .deb)")
    return root


def sample_path(name: str) -> Path:
    p = opencv_samples_dir() / name
    if not p.is_file():
        raise DatasetError(f"{name} is not among the OpenCV sample images in {p.parent}; refetch with "
                           "`vlens data fetch opencv-samples --force`")
    return p


def _download_deb(folder: Path, timeout: float) -> Path:
    if shutil.which("apt-get") is None:
        raise DatasetError("cannot fetch the OpenCV sample images: apt-get is not available on this machine "
                           "(not Debian-family?); download opencv-doc_*.deb elsewhere and pass --deb FILE")
    try:
        proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DatasetError(f"`apt-get download {PACKAGE}` did not finish within {timeout:.0f} s; check the network "
                           "or pass --deb FILE") from None
    debs = sorted(folder.glob(f"{PACKAGE}_*.deb"))
    if proc.returncode != 0 or not debs:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        why = last[-1] if last else f"exit code {proc.returncode}"
        raise DatasetError(f"`apt-get download {PACKAGE}` failed: {why} (try `apt-get update` first, or pass "
                           "--deb FILE)")
    return debs[-1]


DEB_MAGIC = b"!<arch>\ndebian-binary"


def check_deb(path: Path) -> None:
    """A one-line DatasetError unless ``path`` starts like a Debian package (an ar archive whose first member is
    ``debian-binary``), saying what it looks like instead."""
    with open(path, "rb") as fh:
        head = fh.read(len(DEB_MAGIC))
    if head == DEB_MAGIC:
        return
    size = path.stat().st_size
    what = "an empty file" if size == 0 else "an HTML page (a download error page?)" if head.lstrip().lower(
    ).startswith((b"<!doctype", b"<html")) else f"a {size:,}-byte file that does not start like one"
    raise DatasetError(f"--deb {path} is not a Debian package: it is {what}; download opencv-doc_*.deb again "
                       "(e.g. `apt-get download opencv-doc`)")


def _extract_images(deb: Path, dest: Path) -> list[str]:
    """Stream ``deb``'s file tree and write the kept files flat into ``dest``; return their names."""
    if shutil.which("dpkg-deb") is None:
        raise DatasetError("cannot unpack the opencv-doc package: dpkg-deb is not available on this machine")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    kept = []
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not (member.isfile() and name.startswith(PACKAGE_DATA)):
                    continue
                rel = name[len(PACKAGE_DATA):]
                if "/" in rel or not (rel.lower().endswith(KEEP_SUFFIXES) or rel in KEEP_FILES):
                    continue
                src = tar.extractfile(member)
                with open(dest / rel, "wb") as fh:
                    shutil.copyfileobj(src, fh)
                kept.append(rel)
    except tarfile.TarError as exc:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
        why = err.splitlines()[-1] if err else str(exc)  # dpkg-deb's reason, not the empty stream it left
        raise DatasetError(f"{deb} is not a readable opencv-doc package ({why})") from None
    finally:
        if not proc.stdout.closed:
            proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if proc.returncode != 0:
        raise DatasetError(f"dpkg-deb could not read {deb}: {err.splitlines()[-1] if err else proc.returncode}")
    return kept


def fetch_opencv_samples(deb: str | Path | None = None, force: bool = False, timeout: float = 300.0) -> Path:
    """Make sure the OpenCV sample images are in the cache and return their folder.

    ``deb``: a downloaded ``opencv-doc_*.deb`` to unpack instead of running ``apt-get download`` (always unpacked
    when given, replacing what the cache holds). ``force``: fetch again even if the images are there.
    """
    root = samples_root()
    if is_available() and not force and deb is None:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".opencv-samples-") as tmp:
        tmp = Path(tmp)
        if deb is None:
            dl = tmp / "download"
            dl.mkdir()
            deb_path = _download_deb(dl, timeout)
        else:
            deb_path = Path(deb)
            if not deb_path.is_file():
                raise DatasetError(f"--deb {deb}: no such file")
            check_deb(deb_path)
        out = tmp / "images"
        out.mkdir()
        kept = _extract_images(deb_path, out)
        missing = [f for f in PAIR_FILES + HELDOUT_PHOTOS if f not in kept]
        if missing:
            raise DatasetError(f"{deb_path.name} does not contain {', '.join(missing[:4])}"
                               f"{' ...' if len(missing) > 4 else ''}; is it an opencv-doc package?")
        (out / MARKER).write_text(f"{deb_path.name}\n{len(kept)} files from {PACKAGE_DATA}\n")
        old = None
        if root.exists():
            old = root.with_name(f".opencv-samples-old-{os.getpid()}")
            root.rename(old)
        out.rename(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return root


def photo_paths(names) -> list[Path]:
    return [sample_path(n) for n in names]

#!/usr/bin/env python3
"""Build runsc-cuda's onedir binary, its tarball and its .deb.

    python packaging/build.py binary   # PyInstaller onedir -> build/pyinstaller/dist/runsc-cuda/
    python packaging/build.py dist     # binary, then dist/runsc-cuda-<v>-linux-<arch>/ and its .tar.gz + .sha256
    python packaging/build.py deb      # dist/runsc-cuda_<v>_<debarch>.deb + .sha256 from the onedir bundle
    python packaging/build.py binary-path   # where `dist` leaves the runnable binary

``make dist`` and ``make deb`` call these.  The functions take their paths as
arguments so tests can build a .deb from a stand-in bundle without PyInstaller.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import platform
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from runsc_cuda import __version__, conffile, layout  # noqa: E402
from runsc_cuda.oci.help import GPU_RELEASE  # noqa: E402

PYINSTALLER_DIST = REPO / "build" / "pyinstaller" / "dist"
PYINSTALLER_WORK = REPO / "build" / "pyinstaller" / "work"
DIST = REPO / "dist"
SPEC = REPO / "shim.spec"
DOCS = REPO / "docs"
EXAMPLES = ("docker", "containerd", "kubernetes")
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64el", "s390x": "s390x"}
DEFAULT_MAINTAINER = "runsc-cuda maintainers <maintainers@runsc-cuda.invalid>"
# gVisor's apt repository versions runsc by release date (release-20260817.0 is 20260817.0); a
# distribution's own package is older and numbered below it (Debian 12: 0.0~20221219.0-2+b3, no nvproxy),
# so apt never pulls that one in for runsc-cuda.
RUNSC_RELATION = f"runsc (>= {GPU_RELEASE.removeprefix('release-')})"


def machine() -> str:
    return platform.machine() or "unknown"


def dist_name(version: str = __version__, arch: str | None = None) -> str:
    """``runsc-cuda-<version>-linux-<arch>``: the tarball's name and its top folder."""
    return f"runsc-cuda-{version}-linux-{arch or machine()}"


def deb_arch(arch: str | None = None) -> str:
    arch = arch or machine()
    return DEB_ARCH.get(arch, arch)


def deb_name(version: str = __version__, arch: str | None = None) -> str:
    return f"runsc-cuda_{version}_{deb_arch(arch)}.deb"


def binary_path(dist: Path = DIST) -> Path:
    """The runnable binary that ``dist`` leaves unpacked next to the tarball."""
    return dist / dist_name() / "runsc-cuda"


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else now: the mtime of every archived file."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return int(time.time())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha256(path: Path) -> Path:
    """``<file>.sha256`` in sha256sum's format, so ``sha256sum -c`` checks it in the same folder."""
    out = path.with_name(path.name + ".sha256")
    out.write_text(f"{sha256_file(path)}  {path.name}\n")
    return out


# --- the binary ----------------------------------------------------------------------


def build_binary(dist: Path = PYINSTALLER_DIST, work: Path = PYINSTALLER_WORK) -> Path:
    """Run PyInstaller on shim.spec; return the onedir bundle's folder."""
    cmd = [
        sys.executable,
        "-m",
        "PyInstaller",
        "--noconfirm",
        "--clean",
        "--log-level",
        "WARN",
        "--distpath",
        str(dist),
        "--workpath",
        str(work),
        str(SPEC),
    ]
    subprocess.run(cmd, check=True, cwd=REPO)
    bundle = dist / "runsc-cuda"
    if not (bundle / "runsc-cuda").is_file():
        raise SystemExit(f"PyInstaller left no {bundle / 'runsc-cuda'}")
    return bundle


def copy_manual(dest: Path) -> None:
    """The front page and the manual: ``dest/README.md`` and ``dest/docs/`` (its links stay relative)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "README.md", dest / "README.md")
    shutil.copytree(DOCS, dest / "docs", ignore=shutil.ignore_patterns("__pycache__", ".*"))


def add_docs(tree: Path) -> None:
    """The shipped config, the ready-made engine configs and the docs, beside the binary."""
    (tree / "config.toml").write_text(conffile.render_toml())
    for name in EXAMPLES:
        shutil.copytree(HERE / name, tree / "examples" / name)
    shutil.copy2(HERE / "README.md", tree / "examples" / "README.md")
    copy_manual(tree)


def stage_tree(bundle: Path, dist: Path = DIST) -> Path:
    """``dist/runsc-cuda-<v>-linux-<arch>/``: the onedir bundle plus config and examples."""
    tree = dist / dist_name()
    if tree.exists():
        shutil.rmtree(tree)
    dist.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle, tree, symlinks=True)
    add_docs(tree)
    return tree


def make_tarball(tree: Path, out: Path, mtime: int | None = None) -> Path:
    """A reproducible .tar.gz of ``tree`` (sorted, root-owned, one mtime) with ``tree``'s name on top."""
    mtime = source_date_epoch() if mtime is None else mtime

    def entries(folder: Path) -> Iterable[Path]:
        yield folder
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            if child.is_dir() and not child.is_symlink():
                yield from entries(child)
            else:
                yield child

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in entries(tree):
            arcname = str(Path(tree.name) / path.relative_to(tree)) if path != tree else tree.name
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = mtime
            if info.isreg():
                info.mode = 0o755 if info.mode & stat.S_IXUSR else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                if info.isdir():
                    info.mode = 0o755
                tar.addfile(info)
    with open(out, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=mtime, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out


def build_dist(bundle: Path | None = None, dist: Path = DIST) -> tuple[Path, Path]:
    bundle = bundle or build_binary()
    tree = stage_tree(bundle, dist)
    tarball = make_tarball(tree, dist / f"{tree.name}.tar.gz")
    return tarball, write_sha256(tarball)


# --- the .deb ------------------------------------------------------------------------


def glibc_version() -> str | None:
    """The build machine's glibc: PyInstaller binaries need at least this one."""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return None
    words = text.split()
    return words[1] if len(words) == 2 and words[0] == "glibc" else None


def control_text(version: str, arch: str, installed_kib: int, maintainer: str) -> str:
    libc = glibc_version()
    fields = [
        ("Package", "runsc-cuda"),
        ("Version", version),
        ("Architecture", arch),
        ("Maintainer", maintainer),
        ("Installed-Size", str(installed_kib)),
    ]
    if libc:
        fields.append(("Depends", f"libc6 (>= {libc})"))
    fields += [
        ("Recommends", RUNSC_RELATION),
        ("Suggests", "criu"),
        ("Section", "admin"),
        ("Priority", "optional"),
        (
            "Description",
            "drop-in OCI runtime that checkpoints and restores GPU containers under gVisor\n"
            " runsc-cuda is called by Docker, containerd and Kubernetes exactly like runc.\n"
            " It forwards every call to gVisor's runsc; for GPU containers it mounts the\n"
            " host's cuda-checkpoint into the sandbox, turns on nvproxy, and freezes and\n"
            " thaws CUDA processes around runsc checkpoint and restore.\n"
            " .\n"
            " The program is a self-contained bundle (Python included) under\n"
            " /usr/lib/runsc-cuda. Run `runsc-cuda doctor` to check the host.",
        ),
    ]
    return "".join(f"{k}: {v}\n" for k, v in fields)


COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: runsc-cuda

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.

Comment: /usr/lib/runsc-cuda bundles CPython (PSF-2.0), PyInstaller's bootloader
 (GPL-2.0-or-later with the PyInstaller bootloader exception), jsonschema and
 its dependencies (MIT) and python-json-logger (BSD-2-Clause).
"""


def _copy_tree_normalised(src: Path, dest: Path) -> None:
    """Copy with modes a package should have: 0755 for folders and executables, 0644 otherwise."""
    shutil.copytree(src, dest, symlinks=True)
    for root, dirs, files in os.walk(dest):
        for d in dirs:
            p = Path(root, d)
            if not p.is_symlink():
                p.chmod(0o755)
        for name in files:
            p = Path(root, name)
            if p.is_symlink():
                continue
            p.chmod(0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644)


def stage_deb(bundle: Path, root: Path, version: str, arch: str, maintainer: str) -> None:
    """The package's file tree and DEBIAN/ control files under ``root``."""
    lib = root / layout.LIB_DIR.lstrip("/")
    lib.parent.mkdir(parents=True, exist_ok=True)
    _copy_tree_normalised(bundle, lib)
    binary = root / layout.BIN_PATH.lstrip("/")
    binary.parent.mkdir(parents=True, exist_ok=True)
    # Relative, so the link also works in a tree unpacked elsewhere (dpkg-deb -x).
    binary.symlink_to(os.path.relpath(lib / "runsc-cuda", binary.parent))
    conf = root / layout.CONFIG_PATH.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(conffile.render_toml())
    conf.chmod(0o644)
    doc = root / layout.DOC_DIR.lstrip("/")
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(COPYRIGHT)
    for name in EXAMPLES:
        shutil.copytree(HERE / name, doc / "examples" / name)
    shutil.copy2(HERE / "README.md", doc / "examples" / "README.md")
    copy_manual(doc)
    for p in doc.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)

    size = sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir())
    debian = root / "DEBIAN"
    debian.mkdir()
    (debian / "control").write_text(control_text(version, arch, (size + 1023) // 1024, maintainer))
    (debian / "conffiles").write_text(layout.CONFIG_PATH + "\n")
    sums = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink() and debian not in p.parents:
            digest = hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()
            sums.append(f"{digest}  {p.relative_to(root)}\n")
    (debian / "md5sums").write_text("".join(sums))
    for p in debian.iterdir():
        p.chmod(0o644)
    debian.chmod(0o755)


def build_deb(
    bundle: Path,
    out_dir: Path = DIST,
    version: str = __version__,
    arch: str | None = None,
    maintainer: str | None = None,
) -> Path:
    """``dpkg-deb --build`` the package from an onedir bundle; return the .deb's path."""
    arch = deb_arch(arch)
    maintainer = maintainer or os.environ.get("DEB_MAINTAINER") or DEFAULT_MAINTAINER
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"runsc-cuda_{version}_{arch}.deb"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(source_date_epoch()))
    with tempfile.TemporaryDirectory(prefix="runsc-cuda-deb.") as tmp:
        root = Path(tmp) / "root"
        root.mkdir(mode=0o755)
        stage_deb(bundle, root, version, arch, maintainer)
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return out


# --- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("binary", help="PyInstaller onedir bundle in build/pyinstaller/dist/runsc-cuda")
    p_dist = sub.add_parser("dist", help="binary, then the versioned tarball and its checksum in dist/")
    p_dist.add_argument("--bundle", type=Path, help="use this onedir bundle instead of building one")
    p_deb = sub.add_parser("deb", help="the .deb (and its checksum) in dist/")
    p_deb.add_argument("--bundle", type=Path, default=PYINSTALLER_DIST / "runsc-cuda", help="the onedir bundle")
    sub.add_parser("binary-path", help="print where `dist` leaves the runnable binary")
    sub.add_parser("deb-path", help="print where `deb` leaves the package")
    args = parser.parse_args(argv)
    if args.what == "binary":
        print(build_binary())
    elif args.what == "dist":
        start = time.monotonic()
        tarball, checksum = build_dist(args.bundle)
        print(f"{tarball}\n{checksum}\nbinary: {binary_path()}  ({time.monotonic() - start:.1f} s)")
    elif args.what == "deb":
        if not (args.bundle / "runsc-cuda").is_file():
            parser.error(f"no onedir bundle at {args.bundle}: run `make dist` first")
        deb = build_deb(args.bundle)
        print(f"{deb}\n{write_sha256(deb)}")
    elif args.what == "binary-path":
        print(binary_path())
    elif args.what == "deb-path":
        print(DIST / deb_name())
    return 0


if __name__ == "__main__":
    sys.exit(main())

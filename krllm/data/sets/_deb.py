"""Debian packages without root: `apt-get download` them, read their files in pure Python.

Why pure Python: a `.deb` is an `ar` archive (`debian-binary`, `control.tar.*`, `data.tar.*`), and
the standard library reads the gzip/xz/bzip2 tarballs Debian ships, so no `dpkg` and no unpacking
to disk is needed. Only `data.tar.zst` (Ubuntu since 21.10) falls back to `dpkg-deb --fsys-tarfile`
(present wherever apt is), or to the `zstandard` module when installed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

from krllm.errors import DataError

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60  # name 16, mtime 12, uid 6, gid 6, mode 8, size 10, magic "`\n" 2


def read_ar(data: bytes, where: str = "archive") -> dict[str, bytes]:
    """Member name -> bytes of a (System V / GNU) `ar` archive, as dpkg writes them."""
    if not data.startswith(AR_MAGIC):
        raise DataError(f"{where}: not a Debian package (no '!<arch>' ar header)")
    members: dict[str, bytes] = {}
    pos = len(AR_MAGIC)
    while pos < len(data):
        if data[pos:pos + 1] == b"\n":  # stray padding byte
            pos += 1
            continue
        header = data[pos:pos + AR_HEADER]
        if len(header) < AR_HEADER or header[58:60] != b"`\n":
            raise DataError(f"{where}: corrupt ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise DataError(f"{where}: corrupt ar member size at byte {pos}") from None
        start = pos + AR_HEADER
        if start + size > len(data):
            raise DataError(f"{where}: member {name!r} is truncated ({size} bytes declared, "
                            f"{len(data) - start} present); delete the file and download it again")
        members[name] = data[start:start + size]
        pos = start + size + (size & 1)  # members start on even offsets
    return members


def _data_tar(deb: Path) -> tarfile.TarFile:
    """The package's data tarball, opened for streaming reads."""
    members = read_ar(deb.read_bytes(), str(deb))
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise DataError(f"{deb}: no data.tar.* member (members: {', '.join(members)})")
    payload = members[name]
    if name.endswith(".zst"):
        payload = _unzstd(deb, payload)
    try:
        return tarfile.open(fileobj=io.BytesIO(payload), mode="r:*")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{deb}: cannot read {name} ({e})") from None


def _unzstd(deb: Path, payload: bytes) -> bytes:
    try:
        import zstandard  # optional

        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)).read()
    except ImportError:
        pass
    if shutil.which("dpkg-deb") is None:
        raise DataError(f"{deb}: data.tar.zst needs `dpkg-deb` or the `zstandard` Python package")
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False)
    if out.returncode != 0:
        raise DataError(f"{deb}: dpkg-deb --fsys-tarfile failed: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout


def iter_deb_files(deb: str | Path, prefix: str, suffix: str = "") -> Iterator[tuple[str, bytes]]:
    """(path without the leading './', bytes) of each regular file under `prefix` ending in `suffix`."""
    deb = Path(deb)
    with _data_tar(deb) as tar:
        for info in tar:
            path = info.name.removeprefix("./")
            if info.isfile() and path.startswith(prefix) and path.endswith(suffix):
                fh = tar.extractfile(info)
                if fh is not None:
                    yield path, fh.read()


def deb_version(deb: str | Path) -> str:
    """The version in a pool file name: `pkg_4%3a7.4.7-1_all.deb` -> `4:7.4.7-1`."""
    parts = unquote(Path(deb).name).split("_")
    return parts[1] if len(parts) >= 3 else "unknown"


def apt_download(packages: list[str], dest: Path, what: str, fallback: str, timeout: float = 600) -> dict[str, Path]:
    """Download `packages` into `dest` with `apt-get download` (no root needed); package -> .deb path.

    Raises DataError saying what to do when apt is missing, has no package lists, or fails."""
    apt = shutil.which("apt-get")
    if apt is None:
        raise DataError(f"{what} is built from Debian's {' and '.join(packages)} packages, fetched with "
                        f"`apt-get download`, but apt-get is not on PATH (macOS or a non-Debian Linux). {fallback}")
    try:
        out = subprocess.run([apt, "download", *packages], cwd=dest, capture_output=True, text=True,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"{what}: `apt-get download {' '.join(packages)}` took over {timeout:.0f} s; "
                        f"check the network. {fallback}") from None
    if out.returncode != 0:
        err = "\n".join(line for line in (out.stderr or out.stdout).splitlines() if line.startswith(("E:", "Err")))
        hint = ("; the package lists are missing: run `sudo apt-get update` once"
                if "Unable to locate package" in err or "has no installation candidate" in err else "")
        raise DataError(f"{what}: `apt-get download {' '.join(packages)}` failed (exit {out.returncode})"
                        f"{hint}:\n  {err or (out.stderr or out.stdout).strip()[-500:]}\n{fallback}")
    found = {}
    for pkg in packages:
        debs = sorted(dest.glob(f"{pkg}_*.deb"))
        if not debs:
            raise DataError(f"{what}: apt-get download reported success but wrote no {pkg}_*.deb in {dest}")
        found[pkg] = debs[-1]
    return found

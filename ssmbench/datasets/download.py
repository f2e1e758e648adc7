"""Checksum-verified, atomic downloads and the "are the files there?" check shared by the readers."""

from __future__ import annotations

import hashlib
import time
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import BinaryIO

from model_zoo.files import atomic_writer
from model_zoo.limits import DOWNLOAD_TIMEOUT_S, MAX_DOWNLOAD_BYTES
from ssmbench import __version__
from ssmbench.datasets import DataError

TIMEOUT_S = 60
_CHUNK = 1 << 20
# Some dataset hosts refuse urllib's default agent string.
_USER_AGENT = f"ssmbench/{__version__}"


@dataclass(frozen=True)
class Remote:
    """One published file: its name, the md5 its publisher lists, and where to get it."""

    filename: str
    md5: str
    mirrors: tuple[str, ...]

    def urls(self) -> list[str]:
        return [mirror + self.filename for mirror in self.mirrors]


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, md5: str) -> None:
    """Refuse a file whose md5 differs from the published one."""
    actual = md5sum(path)
    if actual != md5:
        raise DataError(f"{path}: checksum mismatch (md5 {actual}, expected {md5}); delete it and fetch it again")


def _stream(url: str, out: BinaryIO) -> str:
    """Copy `url` into the open binary file `out` and return the md5 of what was written.

    Capped in size and in total time, so a wrong or hostile mirror cannot fill the disk or hang.
    """
    digest, size, start = hashlib.md5(usedforsecurity=False), 0, time.monotonic()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES or time.monotonic() - start > DOWNLOAD_TIMEOUT_S:
                raise DataError(f"{url}: more than {MAX_DOWNLOAD_BYTES:,} bytes or {DOWNLOAD_TIMEOUT_S:g} s; stopped")
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def download_verified(url: str, dest: Path, md5: str) -> Path:
    """Fetch `url` to `dest` only if its md5 matches.

    The bytes go to a temporary file beside `dest` and are renamed into place after the check
    (`atomic_writer`), so an interrupted or tampered download never leaves a file that a later run
    would trust.
    """
    with atomic_writer(dest) as out:
        try:
            actual = _stream(url, out)
        except (OSError, HTTPException, ValueError) as err:  # ValueError: a malformed URL
            raise DataError(f"could not download {url}: {err}") from err
        if actual != md5:
            raise DataError(f"{url}: checksum mismatch (md5 {actual}, expected {md5}); file discarded")
    return dest


def fetch(remote: Remote, directory: Path) -> Path:
    """Download `remote` into `directory`, trying each mirror in turn; the last error wins."""
    reasons = []
    for url in remote.urls():
        try:
            return download_verified(url, directory / remote.filename, remote.md5)
        except DataError as err:
            reasons.append(str(err))
    raise DataError("; ".join(reasons) or f"no mirror known for {remote.filename}")


def missing_message(dataset: str, directory: Path, filenames: list[str], how: str, alternative: str = "") -> str:
    """The one-line "put these files there" message that every reader ends with."""
    instead = f" (or {alternative})" if alternative else ""
    return f"{dataset}: missing {', '.join(filenames)}{instead} in {directory}; {how}"


def ensure_files(dataset: str, directory: Path, remotes: list[Remote], download: bool) -> None:
    """Make sure every remote file is in `directory`, downloading what is missing if allowed."""
    missing = [remote for remote in remotes if not (directory / remote.filename).is_file()]
    if not missing:
        return
    names = [remote.filename for remote in missing]
    source = missing[0].urls()[0] if missing[0].mirrors else "the dataset's publisher"
    if not download:
        how = f"download them (e.g. {source}) or allow downloading"
        raise DataError(missing_message(dataset, directory, names, how))
    for remote in missing:
        try:
            fetch(remote, directory)
        except DataError as err:
            how = f"the download failed ({err}); put the files there by hand"
            raise DataError(missing_message(dataset, directory, names, how)) from None

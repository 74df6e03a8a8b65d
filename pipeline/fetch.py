"""Downloading the BBC News archive into a local cache, and checking it.

    textserve data fetch bbc [--cache-dir DIR] [--url URL]

The archive's copyright is the BBC's, so it is never committed; users fetch it
once. Without a network the command fails with a message that says how to
point `--data` at a local copy instead.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import FetchError

BBC_URL = "http://mlg.ucd.ie/files/datasets/bbc-fulltext.zip"
BBC_DOCUMENTS = 2225
BBC_CLASSES = ("business", "entertainment", "politics", "sport", "tech")


def check_bbc(root: Path) -> Path:
    """Checks a BBC tree: 5 class folders and 2,225 documents in all.

    Returns:
      `root`, for chaining.

    Raises:
      FetchError: naming what is missing or how many documents were found.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if tuple(classes) != BBC_CLASSES:
        raise FetchError(f"{root}: expected class folders {list(BBC_CLASSES)}, found {classes}.")
    count = sum(1 for c in classes for p in (root / c).iterdir() if p.is_file())
    if count != BBC_DOCUMENTS:
        raise FetchError(
            f"{root}: expected {BBC_DOCUMENTS} documents, found {count}; delete it and fetch again."
        )
    return root


def _download(url: str, destination: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="bbc-fulltext.zip") as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise FetchError(
            f"could not download {url}: {getattr(error, 'reason', error)}. Without a network, copy the "
            f"archive's bbc/ folder (one sub-folder per class) somewhere and pass it to "
            f"`textserve train --data PATH`."
        ) from error


def fetch_bbc(cache_dir: Path, url: str = BBC_URL, timeout: float = 60.0) -> Path:
    """Downloads and unpacks the BBC archive once; later calls reuse the cache.

    Args:
      cache_dir: where `bbc/` is unpacked.
      url: the archive (an `http(s)://` or `file://` URL).
      timeout: seconds to wait for the server.

    Returns:
      The path of the checked `bbc/` folder, ready for `--data`.
    """
    target = cache_dir / "bbc"
    if target.is_dir():
        return check_bbc(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = Path(tmp) / "bbc-fulltext.zip"
        _download(url, archive, timeout)
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(tmp)
        except zipfile.BadZipFile as error:
            raise FetchError(f"{url} is not a zip archive: {error}") from error
        unpacked = next((p for p in Path(tmp).rglob("bbc") if p.is_dir()), None)
        if unpacked is None:
            raise FetchError(f"{url}: the archive has no bbc/ folder.")
        check_bbc(unpacked)
        # Rename into place only once complete, so a cache is never half-written.
        shutil.move(str(unpacked), str(target))
    return target

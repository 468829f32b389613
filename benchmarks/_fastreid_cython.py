"""FastReID's Cython ranker (``rank_cy.evaluate_cy``), compiled the way its users compile it.

FastReID's wheel ships ``fastreid/evaluation/rank_cylib/rank_cy.pyx`` with a ``setup.py`` and a
``Makefile`` (``python3 setup.py build_ext --inplace``) but no compiled module. This file copies
the ``.pyx`` from the installed wheel into a cache folder outside the repository and the
site-packages (``$XDG_CACHE_HOME/kdreid/fastreid_cython/`` or ``~/.cache/...``), compiles it as
that ``setup.py`` does (the same source and compiler directives, numpy's include folder, Python's
default compiler flags; ``rank_cy`` only: ``roc_cy`` is not needed), and loads ``evaluate_cy``
from there. The build is redone when the ``.pyx``, Python, numpy or Cython changes, and is
written to a staging folder first, so an interrupted build is never reused.

Needs Cython (``pip install cython``) and a C compiler. ``python benchmarks/_fastreid_cython.py``
builds it (or finds the build) and prints its path.
"""

import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

__all__ = ["load_evaluate_cy", "build_rank_cy", "cache_root"]

NUMPY2_PATCHES = (
    (r"\bnp\.int\b", "np.int64"),
    (r"\bnp\.float\b", "np.float64"),
    (r"\bnp\.bool\b", "np.bool_"),
)
"""Aliases removed in numpy 1.24 (``np.bool`` came back in numpy 2), replaced in the copy."""

SETUP_PY = """\
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    name="fastreid_rank_cy",
    ext_modules=cythonize(
        [Extension("rank_cy", ["rank_cy.pyx"], include_dirs=[np.get_include()])], quiet=True
    ),
)
"""
"""FastReID's ``rank_cylib/setup.py`` for ``rank_cy`` alone, with setuptools for distutils."""


class CythonBuildError(RuntimeError):
    """Cython is missing, or compiling FastReID's ``rank_cy.pyx`` failed."""


def cache_root():
    """The folder that holds the builds: ``$XDG_CACHE_HOME/kdreid/fastreid_cython``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdreid" / "fastreid_cython"


def _source_pyx():
    """``rank_cy.pyx`` of the installed FastReID wheel (found without importing fastreid)."""
    spec = importlib.util.find_spec("fastreid")
    if spec is None or not spec.submodule_search_locations:
        raise CythonBuildError("fastreid is not installed (pip install --no-deps fastreid==1.4.0)")
    pyx = Path(spec.submodule_search_locations[0]) / "evaluation" / "rank_cylib" / "rank_cy.pyx"
    if not pyx.is_file():
        raise CythonBuildError(f"FastReID's Cython source is not where expected: {pyx}")
    return pyx


def _cython_version():
    try:
        return version("cython")
    except PackageNotFoundError:
        raise CythonBuildError(
            "Cython is needed to build FastReID's Cython ranker for the benchmark: "
            f"{sys.executable} -m pip install cython"
        ) from None


def patch_for_numpy2(source):
    """Replace the numpy aliases that numpy >= 1.24 removed.

    Args:
        source (str): the ``.pyx`` text.

    Returns:
        tuple[str, list[str]]: the patched text and one line per replacement made.
    """
    notes = []
    for pattern, replacement in NUMPY2_PATCHES:
        source, count = re.subn(pattern, replacement, source)
        if count:
            notes.append(f"{pattern} -> {replacement} ({count}x)")
    return source, notes


def _build_dir(pyx_text, cython_version):
    key = "\n".join(
        [pyx_text, sys.version, sysconfig.get_platform(), np.__version__, cython_version]
    )
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:16]


def _extension_file(folder):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"rank_cy{suffix}"
        if path.is_file():
            return path
    return None


def build_rank_cy(log=print):
    """Compile FastReID's ``rank_cy.pyx`` into the cache, unless a matching build is there.

    Args:
        log (Callable[[str], None]): receives what was built, patched or reused.

    Returns:
        Path: the compiled extension module.

    Raises:
        CythonBuildError: Cython is missing or the compilation failed (the compiler's output is
            in the message).
    """
    pyx = _source_pyx()
    cython_version = _cython_version()
    original = pyx.read_text()
    folder = _build_dir(original, cython_version)
    built = _extension_file(folder)
    if built is not None:
        log(f"FastReID Cython ranker: reusing {built}")
        return built

    patched, notes = patch_for_numpy2(original)
    log(
        f"FastReID Cython ranker: compiling {pyx} with Cython {cython_version} into {folder}; "
        + (f"patched in the copy: {'; '.join(notes)}" if notes else "no patch needed for numpy 2")
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
    try:
        (staging / "rank_cy.pyx").write_text(patched)
        (staging / "setup.py").write_text(SETUP_PY)
        proc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=staging,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or _extension_file(staging) is None:
            output = (proc.stdout + proc.stderr).strip()[-4000:]
            raise CythonBuildError(f"Compiling {pyx} failed:\n{output}")
        shutil.rmtree(staging / "build", ignore_errors=True)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _extension_file(folder)


def load_evaluate_cy(log=print):
    """FastReID's ``evaluate_cy``, built if needed, imported from the cache folder.

    The module is loaded from its file; neither ``sys.path`` nor the site-packages change.

    Args:
        log (Callable[[str], None]): receives what was built, patched or reused.

    Returns:
        Callable: ``evaluate_cy(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
        use_metric_cuhk03=False)``.
    """
    path = build_rank_cy(log)
    spec = importlib.util.spec_from_file_location("rank_cy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.evaluate_cy


if __name__ == "__main__":
    print(build_rank_cy())

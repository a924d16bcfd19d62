"""Build the rules as C extension modules with mypyc, beside their sources (README, "Compiled rules").

    python deploy/compile.py           build them, and write worker/compiled.txt (what each was built from)
    python deploy/compile.py --clean   remove them: the rules run interpreted

The modules are those of `worker.compiled.SOURCES`. Needs mypy (the test tools) and a C compiler; without them
the build fails and says so, and the rules run interpreted until it is made.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean() -> list[Path]:
    """Remove every extension module of the package and the manifest; the paths removed."""
    removed = [path for pattern in ("*.so", "*.pyd") for path in (ROOT / "worker").rglob(pattern)]
    removed += [path for path in [ROOT / "worker" / "compiled.txt"] if path.exists()]
    for path in removed:
        path.unlink()
    return removed


def build() -> None:
    # Importing the package checks that nothing compiled is stale: clean first, so that a stale build never
    # stops the one that replaces it.
    clean()
    sys.path.insert(0, str(ROOT))
    from mypyc.build import mypycify
    from setuptools import setup

    from worker import compiled

    sources = [str(compiled.PACKAGE / name) for name in compiled.SOURCES]
    with tempfile.TemporaryDirectory(prefix="backorder-mypyc-") as work:
        setup(
            name="backorder-worker-rules",
            ext_modules=mypycify(sources, opt_level="3", group_name=compiled.GROUP, target_dir=f"{work}/c"),
            script_args=["--quiet", "build_ext", "--inplace", f"--build-temp={work}/temp", f"--build-lib={work}/lib"],
        )
    compiled.MANIFEST.write_text(
        "".join(f"{name} {compiled.digest(compiled.PACKAGE / name)}\n" for name in compiled.SOURCES)
    )
    missing = [name for name in compiled.SOURCES if name not in compiled.built()]
    if missing:
        sys.exit(f"compile: no extension module built for {', '.join(missing)}")
    print(f"compile: {len(sources)} modules of worker/ built with mypyc ({compiled.GROUP}__mypyc)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", action="store_true", help="remove the extension modules")
    if parser.parse_args().clean:
        print(f"compile: {len(clean())} files removed; the rules run interpreted")
    else:
        build()


if __name__ == "__main__":
    main()

"""The rules compiled with mypyc (README, "Compiled rules"): which modules, and whether what is compiled is still
what their sources say.

`deploy/compile.py` builds each module of `SOURCES` into a C extension module beside its source (Python imports
the extension first) and writes the digest of each source it compiled into `MANIFEST`. A source changed since
then would leave the extension, not the code as it reads, to run: importing the worker refuses that (`check`).
Without the extensions the same modules run interpreted: a burst then handles about a quarter fewer orders a
second (docs/performance-log.md, the eighteenth round).
"""

from __future__ import annotations

import hashlib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

PACKAGE = Path(__file__).parent
# The rules, their events and the unit of work in memory: the consume thread's own Python. (The events' records are
# made from their classes' annotations, which compiled classes keep without arguments: `adapters/avro.py` looks at
# such a field's value instead.)
SOURCES = (
    "domain/allocation.py",
    "domain/eta.py",
    "domain/events.py",
    "domain/model.py",
    "domain/policy.py",
    "domain/priority.py",
    "domain/timeline.py",
    "service/book.py",
    "service/handlers.py",
)
# The extension shared by the compiled modules (mypyc's runtime and their code): `worker/rules__mypyc*.so`.
GROUP = "worker.rules"
MANIFEST = PACKAGE / "compiled.txt"


def digest(source: Path) -> str:
    return hashlib.sha256(source.read_bytes()).hexdigest()


def extensions(source: Path) -> list[Path]:
    """The extension modules built from `source`, if any."""
    return [built for suffix in EXTENSION_SUFFIXES if (built := source.with_suffix(suffix)).exists()]


def built(package: Path = PACKAGE) -> list[str]:
    """The sources that run compiled (of the package in `package`: this one unless told)."""
    return [name for name in SOURCES if extensions(package / name)]


def stale() -> list[str]:
    """The sources whose extension was built from other text than they hold now."""
    names = built()
    if not names:
        return []
    compiled_from = dict(line.split() for line in MANIFEST.read_text().splitlines()) if MANIFEST.exists() else {}
    return [name for name in names if compiled_from.get(name) != digest(PACKAGE / name)]


def check() -> None:
    """Refuse to run extensions built from sources that have changed since."""
    if changed := stale():
        raise ImportError(
            f"worker/{', worker/'.join(changed)} changed since compiled: `make compile` builds the rules again, "
            "`python deploy/compile.py --clean` removes them (the rules then run interpreted)"
        )

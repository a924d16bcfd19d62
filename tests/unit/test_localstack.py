"""deploy/localstack.py's cache: what two processes starting a broker at once (`make test`'s two) do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_two_processes_resolving_the_broker_at_once_run_maven_once(tmp_path: Path) -> None:
    jar = tmp_path / "kafka.jar"
    jar.write_text("")
    runs = tmp_path / "runs"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    mvn = bindir / "mvn"  # a Maven that takes a second and writes a classpath of one jar where it is asked to
    mvn.write_text(
        "#!/bin/sh\n"
        f"echo run >> {runs}\n"
        "sleep 1\n"
        'for arg in "$@"; do case "$arg" in -Dmdep.outputFile=*) '
        f'printf %s {jar} > "${{arg#-Dmdep.outputFile=}}";; esac; done\n'
    )
    mvn.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "XDG_CACHE_HOME": str(tmp_path)}
    resolve = "import localstack; print(localstack.kafka_classpath())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", resolve],
            cwd=DEPLOY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [str(jar), str(jar)]
    assert runs.read_text().splitlines() == ["run"]  # the second waited, then found the first one's

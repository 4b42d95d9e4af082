"""Builds the example's C extension (gcc, -g) into a temporary directory and imports it."""

import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

_build = Path(tempfile.mkdtemp(prefix="heapgate-example-"))
subprocess.run(
    [
        "gcc", "-shared", "-fPIC", "-g", "-O0",
        "-I", sysconfig.get_paths()["include"],
        str(Path(__file__).with_name("bigbuffers.c")),
        "-o", str(_build / f"bigbuffers{sysconfig.get_config_var('EXT_SUFFIX')}"),
    ],
    check=True,
)
sys.path.insert(0, str(_build))

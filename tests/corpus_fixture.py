"""A tiny, real corpus for tests: a few standard-library modules packed as wheels.

Each "project" is a wheel holding real Python source from the running
interpreter's standard library, so the extraction sees real code without any
network. `write_lock` pins the wheels by hash, as data/corpus.lock does.
"""

from __future__ import annotations

import hashlib
import sysconfig
import zipfile
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])

# project name -> standard-library files it carries
PROJECTS: dict[str, list[str]] = {
    "textkit": ["textwrap.py", "shlex.py", "string.py"],
    "argkit": ["argparse.py", "getopt.py"],
    "confkit": ["configparser.py", "netrc.py"],
    "diffkit": ["difflib.py", "filecmp.py"],
    "numkit": ["fractions.py", "statistics.py"],
    "timekit": ["calendar.py", "sched.py"],
    "csvkit": ["csv.py", "pprint.py"],
    "pathkit": ["posixpath.py", "fnmatch.py", "glob.py"],
}


def make_wheel(folder: Path, project: str, files: dict[str, bytes], version: str = "1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{project}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in sorted(files.items()):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, data)
        meta = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\nLicense: MIT\n\n"
        zf.writestr(zipfile.ZipInfo(f"{project}-{version}.dist-info/METADATA", date_time=(2020, 1, 1, 0, 0, 0)), meta)
    return path


def make_corpus(folder: Path, projects: dict[str, list[str]] | None = None) -> list[Path]:
    wheels = []
    for project, files in (projects or PROJECTS).items():
        content = {f"{project}/{name}": (STDLIB / name).read_bytes() for name in files}
        wheels.append(make_wheel(folder, project, content))
    return wheels


def write_lock(lock: Path, wheels: list[Path]) -> None:
    lines = ["# test corpus"]
    for w in sorted(wheels):
        name, version = w.name.split("-")[:2]
        lines.append(f"{name}=={version} --hash=sha256:{hashlib.sha256(w.read_bytes()).hexdigest()}")
    lock.write_text("\n".join(lines) + "\n")

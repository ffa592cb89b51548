"""Pinned wheels of small, independently written implementations of a few behaviours (three projects, one
implementation of each behaviour per project): the behaviour set of the tiny pipeline, built in the test."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

# behaviour -> one implementation per project (names and styles differ, outputs do not)
IMPLEMENTATIONS = {
    "sum": (
        "def total(xs):\n    return sum(xs)\n",
        "def add_all(values):\n    t = 0\n    for v in values:\n        t += v\n    return t\n",
        "import functools\nimport operator\n\ndef summed(seq):\n    return functools.reduce(operator.add, seq, 0)\n",
    ),
    "double": (
        "def doubled(xs):\n    return [2 * v for v in xs]\n",
        "def twice(values):\n    return list(map(lambda v: v + v, values))\n",
        "def times_two(seq):\n    out = []\n    for v in seq:\n        out.append(v * 2)\n    return out\n",
    ),
    "evens": (
        "def count_even(xs):\n    return sum(1 for v in xs if v % 2 == 0)\n",
        "def evens(values):\n    n = 0\n    for v in values:\n        if v % 2 == 0:\n            n += 1\n    return n\n",
        "def how_many_even(seq):\n    return len([v for v in seq if not v % 2])\n",
    ),
    "palindrome": (
        "def is_palindrome(s):\n    return s == s[::-1]\n",
        "def palindromic(word):\n    i, j = 0, len(word) - 1\n    while i < j:\n        if word[i] != word[j]:\n"
        "            return False\n        i, j = i + 1, j - 1\n    return True\n",
        "def reads_same_backwards(seq):\n    return list(seq) == list(reversed(seq))\n",
    ),
    "largest": (
        "def largest(xs):\n    return max(xs, default=None)\n",
        "def biggest(values):\n    best = None\n    for v in values:\n        if best is None or v > best:\n"
        "            best = v\n    return best\n",
        "def top(seq):\n    return sorted(seq)[-1] if len(seq) else None\n",
    ),
    "sort": (
        "def sort_copy(xs):\n    return sorted(xs)\n",
        "def insertion(values):\n    out = []\n    for v in values:\n        i = 0\n        while i < len(out) and out[i] <= v:\n"
        "            i += 1\n        out.insert(i, v)\n    return out\n",
        "def selection(seq):\n    a = list(seq)\n    for i in range(len(a)):\n        m = min(range(i, len(a)), key=a.__getitem__)\n"
        "        a[i], a[m] = a[m], a[i]\n    return a\n",
    ),
    "length": (
        "def size(xs):\n    return len(xs)\n",
        "def count(values):\n    n = 0\n    for _ in values:\n        n += 1\n    return n\n",
        "def length_of(seq):\n    return sum(1 for _ in seq)\n",
    ),
    "square": (
        "def squares(xs):\n    return [v * v for v in xs]\n",
        "def squared(values):\n    return [v**2 for v in values]\n",
        "def power_two(seq):\n    return list(map(lambda v: pow(v, 2), seq))\n",
    ),
}
PROJECTS = ("algo-one", "algo-two", "algo-three")


def write_behaviour_wheels(raw_dir: Path, lockfile: Path) -> None:
    """One wheel per project (module ``funcs.py``), and the hash-pinned lock the tasks stage checks."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, project in enumerate(PROJECTS):
        package = project.replace("-", "_")
        path = raw_dir / f"{package}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"{package}/funcs.py", "\n\n".join(impls[n] for impls in IMPLEMENTATIONS.values()))
        lines.append(f"{project}==1.0 --hash=sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}\n")
    lockfile.write_text("".join(lines))

"""Run every benchmark script in this folder, one after another (`make bench`); the GPU one has `make bench-gpu`."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
SEPARATE = {Path(__file__).name, "gpu.py"}  # gpu.py needs a GPU: make bench-gpu
failed = []
for script in sorted(here.glob("*.py")):
    if script.name in SEPARATE:
        continue
    print(f"== {script.name}", flush=True)
    if subprocess.call([sys.executable, str(script)]) != 0:
        failed.append(script.name)
sys.exit(f"failed: {', '.join(failed)}" if failed else 0)

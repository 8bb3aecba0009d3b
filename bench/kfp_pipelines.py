"""The pipelines of bench/kfp.sh, and their runs under kfp.local.

    python3 bench/kfp_pipelines.py compile OUT_DIR
    python3 bench/kfp_pipelines.py local chain|loop REPEATS   # prints one wall time per run
"""

import sys
import tempfile
import time
from pathlib import Path

from kfp import compiler, dsl


@dsl.component
def add(a: int, b: int) -> int:
    return a + b


@dsl.pipeline(name="bench-chain")
def chain10(x: int = 1):
    prev = add(a=x, b=1)
    for _ in range(9):
        prev = add(a=prev.output, b=1)


@dsl.pipeline(name="bench-loop")
def loop4():
    with dsl.ParallelFor([1, 2, 3, 4], parallelism=2) as item:
        add(a=item, b=1)


PIPELINES = {"chain": chain10, "loop": loop4}

if __name__ == "__main__":
    if sys.argv[1] == "compile":
        for name, p in PIPELINES.items():
            compiler.Compiler().compile(p, str(Path(sys.argv[2]) / f"{name}.yaml"))
    else:
        from kfp import local

        root = tempfile.mkdtemp()
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root)
        for _ in range(int(sys.argv[3])):
            start = time.perf_counter()
            # Caching is off in kfp.local; every run executes every task.
            PIPELINES[sys.argv[2]]()
            print(f"\ncapstan-bench-time={time.perf_counter() - start:.3f}", flush=True)

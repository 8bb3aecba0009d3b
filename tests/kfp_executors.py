"""Compiles the KFP pipeline that capstan's executor tests run on containers and on Ray.

    python kfp_executors.py OUT.yaml [IMAGE SHELL_IMAGE]

The pipeline reuses the Python function components of examples/kfp/pipelines.py: a dataset, a
model and metrics handed on as artifacts with their metadata, and a ParallelFor whose artifact
and parameter outputs a later task collects. A container component counts the dataset's lines
with `wc` in SHELL_IMAGE (default `busybox:1.36`).

Without IMAGE the Python components are compiled exactly as pipelines.py compiles them: image
`python:3.11`, with kfp's `pip install` preamble. With IMAGE they run in that image, which must
hold kfp already, and without the preamble (`install_kfp_package=False`): how components are
built for clusters that cannot reach a package index.
"""

import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore", FutureWarning)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kfp"))

import pipelines  # noqa: E402
from kfp import compiler, dsl  # noqa: E402
from kfp.dsl import Dataset, Input  # noqa: E402


def main():
    out = sys.argv[1]
    image = sys.argv[2] if len(sys.argv) > 2 else None
    shell_image = sys.argv[3] if len(sys.argv) > 3 else "busybox:1.36"

    @dsl.container_component
    def count_lines(data: Input[Dataset], lines: dsl.OutputPath(int)):
        return dsl.ContainerSpec(
            image=shell_image,
            command=["sh", "-c", 'mkdir -p "$(dirname "$1")" && wc -l < "$0" | tr -d " " > "$1"'],
            args=[data.path, lines],
        )

    def component(c):
        if image is None:
            return c
        return dsl.component(base_image=image, install_kfp_package=False)(c.python_func)

    make_data = component(pipelines.make_data)
    train = component(pipelines.train)
    evaluate = component(pipelines.evaluate)
    shard = component(pipelines.shard)
    merge = component(pipelines.merge)

    @dsl.pipeline(name="executors")
    def executors(rows: int = 4, lr: float = 0.1, xs: list = [1, 2, 3]):
        data = make_data(rows=rows)
        trained = train(data=data.outputs["data"], lr=lr)
        evaluate(model=trained.outputs["model"])
        count_lines(data=data.outputs["data"])
        with dsl.ParallelFor(xs) as x:
            s = shard(x=x)
        merge(shards=dsl.Collected(s.outputs["data"]), squares=dsl.Collected(s.outputs["Output"]))

    compiler.Compiler().compile(executors, out)


if __name__ == "__main__":
    main()

"""Compiles the KFP pipeline that capstan's executor tests run on containers and on Ray.

    python kfp_executors.py OUT.yaml [IMAGE]

The pipeline reuses the Python function components of examples/kfp/pipelines.py: a dataset, a
model and metrics handed on as artifacts with their metadata, and a ParallelFor whose artifact
and parameter outputs a later task collects.

Without IMAGE the components are compiled exactly as pipelines.py compiles them: image
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


def main():
    out = sys.argv[1]
    image = sys.argv[2] if len(sys.argv) > 2 else None

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
        with dsl.ParallelFor(xs) as x:
            s = shard(x=x)
        merge(shards=dsl.Collected(s.outputs["data"]), squares=dsl.Collected(s.outputs["Output"]))

    compiler.Compiler().compile(executors, out)


if __name__ == "__main__":
    main()

"""kfp pipelines that capstan runs; `python3 pipelines.py` compiles each to NAME.yaml here.

The compiled YAML is committed so that capstan's tests read it without Python; running the
Python components needs `kfp` in the step environment (see the README).
"""

import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from kfp import compiler, dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


@dsl.component
def add(a: int, b: int) -> int:
    return a + b


@dsl.pipeline(name="chain")
def chain(x: int = 1, y: int = 2):
    first = add(a=x, b=y)
    second = add(a=first.output, b=10).set_caching_options(False)
    add(a=second.output, b=first.output)


@dsl.component
def make_data(rows: int, data: Output[Dataset]):
    with open(data.path, "w") as f:
        for i in range(rows):
            f.write(f"{i},{i * 2}\n")
    data.metadata["rows"] = rows


@dsl.component
def train(data: Input[Dataset], lr: float, model: Output[Model]) -> float:
    with open(data.path) as f:
        rows = [line.split(",") for line in f.read().splitlines()]
    slope = sum(int(b) for _, b in rows) / max(1, sum(int(a) for a, _ in rows))
    with open(model.path, "w") as f:
        f.write(f"slope={slope} lr={lr}\n")
    model.metadata["framework"] = "by-hand"
    return slope


@dsl.component
def evaluate(model: Input[Model], metrics: Output[Metrics]):
    with open(model.path) as f:
        slope = float(f.read().split()[0].split("=")[1])
    metrics.log_metric("slope", slope)


@dsl.pipeline(name="artifacts")
def artifacts(rows: int = 5, lr: float = 0.1):
    data = make_data(rows=rows)
    trained = train(data=data.outputs["data"], lr=lr)
    evaluate(model=trained.outputs["model"])


@dsl.component
def flip(n: int) -> str:
    return ["heads", "tails", "edge"][n % 3]


@dsl.component
def say(msg: str) -> str:
    print(msg)
    return msg


@dsl.pipeline(name="conditions")
def conditions(n: int = 0):
    coin = flip(n=n)
    with dsl.If(coin.output == "heads"):
        say(msg="it was heads")
    with dsl.Elif(coin.output == "tails"):
        say(msg="it was tails")
    with dsl.Else():
        say(msg="it stood on its edge")


@dsl.component
def square(x: int) -> int:
    return x * x


@dsl.component
def total(xs: List[int]) -> int:
    return sum(xs)


@dsl.pipeline(name="loops")
def loops(items: List[int] = [1, 2, 3]):
    with dsl.ParallelFor([10, 20, 30, 40], parallelism=2) as raw:
        say(msg=f"raw item")
        square(x=raw)
    with dsl.ParallelFor(items) as item:
        sq = square(x=item)
    total(xs=dsl.Collected(sq.output))


@dsl.component
def fail(msg: str):
    raise RuntimeError(msg)


@dsl.component
def report(status: dsl.PipelineTaskFinalStatus) -> str:
    print("pipeline finished:", status.state)
    return status.state


@dsl.pipeline(name="exit-handler")
def exit_handler(msg: str = "boom"):
    final = report()
    with dsl.ExitHandler(final):
        fail(msg=msg)


@dsl.component
def flaky(marker: str) -> str:
    import os
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails on purpose")
    return "second attempt"


@dsl.pipeline(name="retries")
def retries(marker: str):
    flaky(marker=marker).set_retry(num_retries=2, backoff_duration="0s")


@dsl.container_component
def wc(text: str, lines: dsl.OutputPath(int), copy: Output[Dataset]):
    return dsl.ContainerSpec(
        image="busybox:1.36",
        command=["sh", "-c"],
        args=[
            'mkdir -p "$(dirname "$1")" "$(dirname "$2")"; printf "%s\\n" "$0" > "$2"; wc -l < "$2" | tr -d " " > "$1"',
            text, lines, copy.path,
        ],
    )


@dsl.component
def read_copy(copy: Input[Dataset], lines: int) -> str:
    with open(copy.path) as f:
        return f"{lines}:{f.read().strip()}"


@dsl.pipeline(name="containers")
def containers(text: str = "one"):
    counted = wc(text=text).set_env_variable("GREETING", "hello").set_cpu_limit("1").set_memory_limit("512M")
    read_copy(copy=counted.outputs["copy"], lines=counted.outputs["lines"])


@dsl.component
def stats(xs: List[float], config: Dict[str, int]) -> NamedTuple(
        "Stats", [("count", int), ("mean", float), ("names", List[str]), ("config", Dict[str, int])]):
    from collections import namedtuple
    out = namedtuple("Stats", ["count", "mean", "names", "config"])
    return out(len(xs), sum(xs) / len(xs), [f"x{i}" for i in range(len(xs))], config)


@dsl.component
def show(count: int, mean: float, names: List[str], config: Dict[str, int], flag: bool) -> str:
    return f"{count} {mean} {','.join(names)} {config['depth']} {flag}"


@dsl.pipeline(name="structs")
def structs(xs: List[float] = [1.0, 2.0, 4.5], config: Dict[str, int] = {"depth": 3}, flag: bool = True):
    s = stats(xs=xs, config=config)
    show(count=s.outputs["count"], mean=s.outputs["mean"], names=s.outputs["names"],
         config=s.outputs["config"], flag=flag)


@dsl.component
def read_text(data: Input[Dataset]) -> str:
    with open(data.path) as f:
        return f.read().strip()


@dsl.pipeline(name="importer")
def importer(uri: str):
    imported = dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False,
                            metadata={"source": "test"})
    read_text(data=imported.output)


@dsl.pipeline
def inner(a: int, b: int) -> int:
    s = add(a=a, b=b)
    return square(x=s.output).output


@dsl.pipeline(name="nested")
def nested(x: int = 2):
    sub = inner(a=x, b=3)
    add(a=sub.output, b=1)


@dsl.pipeline(name="nested-loops")
def nested_loops():
    with dsl.ParallelFor([1, 2]) as a:
        with dsl.ParallelFor([10, 20, 30], parallelism=2) as b:
            add(a=a, b=b)
    with dsl.ParallelFor([{"n": 3, "tags": ["x", "y"]}]) as row:
        with dsl.ParallelFor(row.tags) as tag:
            say(msg=tag)


@dsl.component
def shard(x: int, data: Output[Dataset]) -> int:
    with open(data.path, "w") as f:
        f.write(f"shard {x}\n")
    data.metadata["x"] = x
    return x * x


@dsl.component
def merge(shards: Input[List[Dataset]], squares: List[int]) -> str:
    parts = []
    for d in shards:
        with open(d.path) as f:
            parts.append(f"{f.read().strip()} (x={d.metadata['x']})")
    return "; ".join(parts) + f" | squares={sorted(squares)}"


@dsl.component
def describe_shard(data: Input[Dataset], square: int) -> str:
    with open(data.path) as f:
        return f"{f.read().strip()} x={data.metadata['x']} square={square}"


@dsl.pipeline(name="fan-in")
def fan_in(xs: List[int] = [1, 2, 3]):
    with dsl.ParallelFor(xs) as x:
        s = shard(x=x)
        describe_shard(data=s.outputs["data"], square=s.outputs["Output"])
    merge(shards=dsl.Collected(s.outputs["data"]), squares=dsl.Collected(s.outputs["Output"]))


@dsl.component
def describe(data: Input[Dataset]) -> str:
    with open(data.path) as f:
        return f"{f.read().strip()} rows={data.metadata['rows']}"


@dsl.pipeline(name="metadata")
def metadata(rows: int = 3):
    made = make_data(rows=rows)
    describe(data=made.outputs["data"])


@dsl.component
def write(text: str, out: Output[Dataset]):
    with open(out.path, "w") as f:
        f.write(text + "\n")
    out.metadata["text"] = text


@dsl.component
def read_tagged(data: Input[Dataset]) -> str:
    with open(data.path) as f:
        return f"{f.read().strip()} ({data.metadata['text']})"


@dsl.pipeline(name="one-of")
def one_of(n: int = 0):
    coin = flip(n=n)
    with dsl.If(coin.output == "heads"):
        heads = say(msg="heads won")
        heads_data = write(text="heads data")
    with dsl.Elif(coin.output == "tails"):
        tails = say(msg="tails won")
        tails_data = write(text="tails data")
    with dsl.Else():
        edge = say(msg="it stood on its edge")
        edge_data = write(text="edge data")
    say(msg=dsl.OneOf(heads.output, tails.output, edge.output))
    read_tagged(data=dsl.OneOf(heads_data.outputs["out"], tails_data.outputs["out"],
                               edge_data.outputs["out"]))


@dsl.component
def numbers(n: int) -> List[int]:
    return list(range(1, n + 1))


@dsl.component
def table(n: int) -> List[dict]:
    return [{"name": f"r{i}", "tags": [f"t{i}{j}" for j in range(i + 1)]} for i in range(n)]


@dsl.component
def label(tag: str, z: int) -> str:
    return f"{tag}-{z}"


@dsl.pipeline(name="loops-from-outputs")
def loops_from_outputs(xs: List[int] = [1, 2], n: int = 2):
    made = numbers(n=n)
    with dsl.ParallelFor(xs) as x:
        with dsl.ParallelFor(made.output) as y:
            s = add(a=x, b=y)
    total(xs=dsl.Collected(s.output))
    rows = table(n=n)
    with dsl.ParallelFor(rows.output) as row:
        with dsl.ParallelFor(xs) as z:
            with dsl.ParallelFor(row.tags) as tag:
                label(tag=tag, z=z)


@dsl.container_component
def greet(name: str, out: dsl.OutputPath(str), greeting: Optional[str] = None):
    return dsl.ContainerSpec(
        image="busybox:1.36",
        command=["sh", "-c", 'mkdir -p "$(dirname "$0")"; echo "$@" > "$0"'],
        args=[
            out,
            dsl.ConcatPlaceholder(["name=", name, "!"]),
            dsl.IfPresentPlaceholder(input_name="greeting", then=["greeting", greeting], else_=["no-greeting"]),
        ],
    )


@dsl.pipeline(name="placeholders")
def placeholders(name: str = "ada"):
    greet(name=name, greeting="hi").set_display_name("with-greeting")
    greet(name=name)


@dsl.component
def env_and_key(key: str) -> str:
    import os
    return f"{os.environ['STAGE']}:{os.environ['TOKEN_SUFFIX']}:{key}"


@dsl.pipeline(name="options")
def options(key: str = "k"):
    (env_and_key(key=key)
     .set_env_variable("STAGE", "test")
     .set_env_variable("TOKEN_SUFFIX", "x1")
     .set_cpu_limit("500m")
     .set_memory_limit("1Gi")
     .set_accelerator_type("nvidia.com/gpu")
     .set_accelerator_limit(1)
     .set_caching_options(True, cache_key="fixed-key"))


@dsl.pipeline(name="input-artifacts")
def input_artifacts(data: Input[Dataset]):
    read_text(data=data)


@dsl.component
def report_kinds(page: Output[HTML], notes: Output[Markdown], scores: Output[ClassificationMetrics]):
    with open(page.path, "w") as f:
        f.write("<h1>ok</h1>")
    page.metadata["title"] = "ok"
    with open(notes.path, "w") as f:
        f.write("# notes")
    scores.log_confusion_matrix(["a", "b"], [[3, 1], [0, 4]])


@dsl.component
def read_kinds(page: Input[HTML], notes: Input[Markdown]) -> str:
    with open(page.path) as p, open(notes.path) as n:
        return f"{p.read()}|{n.read()}|{page.metadata['title']}"


@dsl.pipeline(name="artifact-types")
def artifact_types():
    made = report_kinds()
    read_kinds(page=made.outputs["page"], notes=made.outputs["notes"])


PIPELINES = [chain, artifacts, conditions, loops, exit_handler, retries, containers, structs,
             importer, nested, nested_loops, fan_in, metadata, one_of, placeholders, options,
             input_artifacts, loops_from_outputs, artifact_types]

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    for p in PIPELINES:
        name = p.pipeline_spec.pipeline_info.name
        compiler.Compiler().compile(p, str(out / f"{name}.yaml"))
        print(out / f"{name}.yaml")

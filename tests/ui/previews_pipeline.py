"""A KFP pipeline, compiled by the real kfp SDK, whose one step writes an artifact of each kind
the artifact page previews: KFP `Metrics` and `ClassificationMetrics` (with a confusion matrix
and an ROC curve), sandboxed HTML, plain text, JSON and a PNG image."""

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Metrics, Output


@dsl.component(base_image="python:3.11")
def report(
    metrics: Output[Metrics],
    scores: Output[ClassificationMetrics],
    page: Output[HTML],
    notes: Output[Artifact],
    config: Output[Artifact],
    plot: Output[Artifact],
):
    import json
    import struct
    import zlib

    metrics.log_metric("accuracy", 0.93)
    scores.log_confusion_matrix(["cat", "dog"], [[5, 1], [2, 7]])
    scores.log_roc_curve([0.0, 0.25, 1.0], [0.0, 0.75, 1.0], [1.0, 0.5, 0.0])
    with open(page.path, "w") as f:
        f.write("<html><body><h1>Report</h1><script>parent.document.title = 'escaped'</script></body></html>")
    with open(notes.path, "w") as f:
        f.write("plain notes\nsecond line\n")
    with open(config.path, "w") as f:
        json.dump({"depth": 3, "layers": [1, 2]}, f)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"\x00" + b"\xff\x00\x00" * 2 + b"\x00" + b"\x00\x00\xff" * 2
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    with open(plot.path, "wb") as f:
        f.write(png)


@dsl.pipeline(name="ui-previews")
def previews():
    report()


def compile_to(path):
    compiler.Compiler().compile(previews, path)

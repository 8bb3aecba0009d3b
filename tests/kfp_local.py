"""Runs pipelines of examples/kfp/pipelines.py under kfp.local and prints what each task produced.

    python kfp_local.py NAME [PARAM=JSON]...

kfp.local.SubprocessRunner(use_venv=False) runs the pipeline in this interpreter's environment.
The result, one JSON document on stdout, maps each task directory under the pipeline root (the
task name) to {"parameters": {...}, "artifacts": {NAME: {"metadata": {...}, "content": TEXT}}},
read from the executor output file and the artifact files that kfp.local leaves there.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "kfp"))

import pipelines  # noqa: E402
from kfp import local  # noqa: E402


def main():
    name, args = sys.argv[1], sys.argv[2:]
    by_name = {p.pipeline_spec.pipeline_info.name: p for p in pipelines.PIPELINES}
    params = {k: json.loads(v) for k, v in (a.split("=", 1) for a in args)}
    root = Path(tempfile.mkdtemp(prefix="kfp-local-"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    # kfp.local logs to stdout: keep stdout for the result.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        by_name[name](**params)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
    out = {}
    for result in sorted(root.glob("*/**/executor_output.json")):
        task_dir = result.parent
        task = str(task_dir.relative_to(next(root.iterdir())))
        doc = json.loads(result.read_text())
        artifacts = {}
        for art, entry in doc.get("artifacts", {}).items():
            meta = entry["artifacts"][0].get("metadata", {})
            path = task_dir / art
            content = path.read_text() if path.is_file() else None
            artifacts[art] = {"metadata": meta, "content": content}
        out[task] = {"parameters": doc.get("parameterValues", {}), "artifacts": artifacts}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()

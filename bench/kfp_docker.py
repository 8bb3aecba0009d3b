"""A chain of no-op container components under kfp.local's DockerRunner; prints the seconds.

    DOCKER_HOST=unix:///tmp/capstan-podman.sock python kfp_docker.py IMAGE STEPS

The anchor for bench/containers.sh: the same chain of STEPS no-op steps (`true` in IMAGE), each
after the previous one, as kfp.local runs it on a Docker API (here Podman's compatible socket,
through the `docker` package). A container component needs no kfp in the image. When kfp.local
fails on the engine's reply (it expects a 404 where Podman answers 500 for a container that
auto-removed itself), the line says so instead of a time.

Podman shim: kfp.local runs containers with `auto_remove=True` and treats a 404 (NotFound) on
the container after it ended as "already removed, succeeded". Podman answers that request with
500 "no such container" instead, which kfp.local takes for an error, so most chains would fail
on the first quick container. With `--podman-shim` (what bench/containers.sh passes) that one
reply is raised as NotFound, as Docker would send it; nothing else changes.
"""

import sys
import tempfile
import time

import docker.api.client
import docker.errors
from kfp import dsl, local

if "--podman-shim" in sys.argv:
    sys.argv.remove("--podman-shim")
    original = docker.api.client.create_api_error_from_http_exception

    def as_docker_would(e):
        response = e.response
        if response is not None and response.status_code == 500 and "no such container" in response.text:
            raise docker.errors.NotFound(e, response=response, explanation=response.text) from e
        return original(e)

    docker.api.client.create_api_error_from_http_exception = as_docker_would

IMAGE, STEPS = sys.argv[1], int(sys.argv[2])


@dsl.container_component
def noop():
    return dsl.ContainerSpec(image=IMAGE, command=["true"])


@dsl.pipeline(name="chain")
def chain():
    prev = noop()
    for _ in range(STEPS - 1):
        task = noop()
        task.after(prev)
        prev = task


local.init(runner=local.DockerRunner(), pipeline_root=tempfile.mkdtemp(prefix="kfp-docker-"))
start = time.time()
try:
    chain()
except Exception as e:  # noqa: BLE001 - reported, not hidden
    print(f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    sys.exit(1)
print(f"{time.time() - start:.3f}")

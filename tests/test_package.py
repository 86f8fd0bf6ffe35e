"""`meshward package`: each module as the OCI image Istio's WasmPlugin pulls, pushed to a real
registry (Debian's `docker-registry`, started here on 127.0.0.1) with `skopeo`, pulled back by
digest byte-identical, and pinned by that digest in the rendered WasmPlugin manifests."""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
import pytest
import yaml

from fleet import free_port, wait_until_ready
from harness import DIST
from test_cli import example, meshward, write_policy

MODULES = sorted(p.stem for p in DIST.glob("*.wasm"))


class Registry:
    """docker-registry (the CNCF distribution registry) on a free loopback port, storing in a
    temporary directory; stopped after."""

    def __init__(self, root):
        binary = shutil.which("docker-registry")
        if binary is None:
            raise FileNotFoundError("docker-registry is missing: run `make system-deps`")
        self.port = free_port()
        config = root / "registry.yml"
        config.write_text(yaml.safe_dump({
            "version": 0.1, "log": {"level": "error"},
            "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
            "http": {"addr": f"127.0.0.1:{self.port}"},
        }))
        self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_ready(f"http://127.0.0.1:{self.port}/v2/", self.proc, "docker-registry")
        except RuntimeError:
            self.stop()
            raise

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    if shutil.which("skopeo") is None:
        raise FileNotFoundError("skopeo is missing: run `make system-deps`")
    server = Registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


def skopeo(*args) -> subprocess.CompletedProcess:
    r = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def package(out) -> dict:
    r = meshward("package", "--dist", DIST, "--out", out, "--tag", "0.1.0")
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()]
    assert sorted(m for m, _, _ in lines) == MODULES, r.stdout
    return {module: (ref, digest.removeprefix("sha256:")) for module, ref, digest in lines}


def plugin_wasm(layout) -> bytes:
    """What Istio's image fetcher takes from an image: the last layer, a tar.gz, its
    `plugin.wasm` (the *compat* variant)."""
    index = json.loads((layout / "index.json").read_text())
    blob = lambda digest: (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    layer = manifest["layers"][-1]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", manifest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as archive:
        member = archive.getmember("plugin.wasm")
        return archive.extractfile(member).read()


def test_every_module_round_trips_through_a_registry_byte_identical(registry, tmp_path):
    packaged = package(tmp_path / "oci")
    for module, (ref, digest) in packaged.items():
        remote = f"docker://127.0.0.1:{registry.port}/meshward/{module}"
        skopeo("copy", "--dest-tls-verify=false", f"oci:{ref}", f"{remote}:0.1.0")
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"{remote}:0.1.0").stdout)
        assert inspected["Digest"] == f"sha256:{digest}", (module, inspected["Digest"])
        back = tmp_path / "back" / module
        back.parent.mkdir(exist_ok=True)
        skopeo("copy", "--src-tls-verify=false", f"{remote}@sha256:{digest}", f"oci:{back}:pulled")
        assert plugin_wasm(back) == (DIST / f"{module}.wasm").read_bytes(), module
    # The same module packaged again is the same image: the digest is known before the push.
    assert package(tmp_path / "again") == {m: (str(tmp_path / "again" / m) + ":0.1.0", d) for m, (_, d) in packaged.items()}


def test_rendered_manifests_pin_the_digest_the_registry_serves(registry, tmp_path):
    packaged = package(tmp_path / "oci")
    for module, (ref, _) in packaged.items():
        skopeo("copy", "--dest-tls-verify=false", f"oci:{ref}", f"docker://127.0.0.1:{registry.port}/meshward/{module}:0.1.0")
    policy = example()
    policy["modules"] = {"url": f"oci://127.0.0.1:{registry.port}/meshward/{{module}}:0.1.0"}
    path = write_policy(tmp_path, policy)
    for form in ("separate", "bundle"):
        r = meshward("render", "istio", path, "--form", form, "--dist", DIST)
        assert r.returncode == 0, r.stderr
        for doc in (d for d in yaml.safe_load_all(r.stdout) if d):
            url = doc["spec"]["url"]
            served = json.loads(skopeo("inspect", "--tls-verify=false", "docker://" + url.removeprefix("oci://")).stdout)["Digest"]
            assert doc["spec"]["sha256"] == served.removeprefix("sha256:"), url


def test_package_says_what_it_needs(tmp_path):
    r = meshward("package", "--dist", tmp_path, "--out", tmp_path / "oci")
    assert r.returncode == 2 and "no .wasm modules" in r.stderr, r.stderr
    r = meshward("package", "--dist", DIST)
    assert r.returncode == 2 and "required arguments were not provided:\n  --out <DIR>" in r.stderr, r.stderr

"""The Python docker SDK through ctproxy: the flows a CI script or Testcontainers would use.

Usage: sdk_flows.py DOCKER_HOST IMAGE NAME_PREFIX. Exits non-zero on the first mismatch.
"""
import io
import sys
import tarfile
import time

import docker

host, image, prefix = sys.argv[1:4]
client = docker.DockerClient(base_url=host, version="auto", timeout=60)
created = []


def name(what):
    n = f"{prefix}-{what}"
    created.append(n)
    return n


try:
    assert client.ping() is True
    assert client.version()["ApiVersion"]

    out = client.containers.run(image, ["sh", "-c", "echo hello sdk"], remove=True)
    assert out == b"hello sdk\n", out

    c = client.containers.run(image, ["sh", "-c", "for i in 1 2 3; do echo l$i; sleep 0.1; done"], detach=True, name=name("logs"))
    streamed = b"".join(c.logs(stream=True, follow=True))
    assert streamed == b"l1\nl2\nl3\n", streamed
    c.remove(force=True)

    c = client.containers.run(image, ["sleep", "300"], detach=True, name=name("exec"))
    code, output = c.exec_run(["sh", "-c", "echo from exec; exit 3"])
    assert (code, output) == (3, b"from exec\n"), (code, output)

    # stdin through a hijacked exec socket, then half-close: output after EOF must still arrive.
    api = client.api
    ex = api.exec_create(c.id, ["sh", "-c", "cat; echo done"], stdin=True)
    sock = api.exec_start(ex["Id"], socket=True)
    raw = sock._sock
    raw.sendall(b"piped\n")
    raw.shutdown(1)
    got = b""
    raw.settimeout(20)
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        got += chunk
    # Multiplexed frames: strip the 8-byte headers.
    payload, i = b"", 0
    while i + 8 <= len(got):
        size = int.from_bytes(got[i + 4:i + 8], "big")
        payload += got[i + 8:i + 8 + size]
        i += 8 + size
    assert payload == b"piped\ndone\n", (got, payload)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        data = b"archived\n"
        info = tarfile.TarInfo("f.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    assert c.put_archive("/tmp", buf.getvalue())
    bits, stat = c.get_archive("/tmp/f.txt")
    with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as t:
        assert t.extractfile("f.txt").read() == b"archived\n"
    assert stat["name"] == "f.txt"
    c.remove(force=True)

    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as t:
        df = f"FROM {image}\nRUN echo built > /b\nCMD cat /b\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(df)
        t.addfile(info, io.BytesIO(df))
    ctx.seek(0)
    tag = f"{prefix}-img:1"
    img, logs = client.images.build(fileobj=ctx, custom_context=True, tag=tag, rm=True)
    assert client.containers.run(tag, remove=True) == b"built\n"

    vol = client.volumes.create(name("vol"))
    net = client.networks.create(name("net"))
    assert any(v.name == vol.name for v in client.volumes.list())
    assert any(n.name == net.name for n in client.networks.list())
    vol.remove()
    net.remove()

    since = time.time() - 1
    c = client.containers.run(image, ["true"], detach=True, name=name("ev"))
    c.wait()
    c.remove()
    actions = [e.get("Action") for e in client.events(since=since, until=time.time() + 1, decode=True, filters={"container": c.id})]
    for a in ("create", "start", "die", "destroy"):
        assert a in actions, (a, actions)

    client.images.remove(tag)
    print("all SDK flows passed")
finally:
    for n in created:
        for remove in (lambda: client.containers.get(n).remove(force=True), lambda: client.volumes.get(n).remove(force=True), lambda: client.networks.get(n).remove()):
            try:
                remove()
            except Exception:
                pass

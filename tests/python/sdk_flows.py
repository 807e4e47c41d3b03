"""The Python docker SDK through ctproxy: the flows a CI script or Testcontainers would use.

Usage: sdk_flows.py DOCKER_HOST [IMAGE [NAME_PREFIX]]. Exits non-zero on the first mismatch. Where a
result can be had twice (version, info), it is compared with the daemon's own socket: the daemon under
test, CTPROXY_TEST_DOCKER_HOST (default unix:///var/run/docker.sock).
"""
import os
import io
import sys
import tarfile
import time

import docker

DIRECT = os.environ.get("CTPROXY_TEST_DOCKER_HOST", "unix:///var/run/docker.sock")
host = sys.argv[1]
image = sys.argv[2] if len(sys.argv) > 2 else "ctproxy-test/busybox:latest"
prefix = sys.argv[3] if len(sys.argv) > 3 else f"ctproxy-test-sdk-{os.getpid()}"
client = docker.DockerClient(base_url=host, version="auto", timeout=60)
direct = docker.DockerClient(base_url=DIRECT, version="auto", timeout=60)
created = []
tag = f"{prefix}-img:1"


def demux(raw):
    """Splits a multiplexed attach/exec stream (8-byte frame headers) into {1: stdout, 2: stderr}."""
    out, i = {1: b"", 2: b""}, 0
    while i + 8 <= len(raw):
        kind, size = raw[i], int.from_bytes(raw[i + 4:i + 8], "big")
        assert kind in (1, 2) and i + 8 + size <= len(raw), ("bad frame", raw[i:i + 8], len(raw))
        out[kind] += raw[i + 8:i + 8 + size]
        i += 8 + size
    assert i == len(raw), ("trailing bytes", raw[i:])
    return out


def read_to_eof(sock, timeout=30):
    sock.settimeout(timeout)
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk


def name(what):
    n = f"{prefix}-{what}"
    created.append(n)
    return n


try:
    assert client.ping() is True
    assert client.version() == direct.version(), (client.version(), direct.version())
    assert client.api.api_version == direct.api.api_version
    sysinfo, dinfo = client.info(), direct.info()
    for k in ("ID", "Name", "ServerVersion", "Driver", "OSType", "OperatingSystem", "KernelVersion", "NCPU", "MemTotal", "DockerRootDir"):
        assert sysinfo[k] == dinfo[k], (k, sysinfo[k], dinfo[k])

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
    got = demux(read_to_eof(raw))
    assert got == {1: b"piped\ndone\n", 2: b""}, got

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

    # attach_socket before the start: stdin in, stdout and stderr back as frames, EOF at exit.
    c = client.containers.create(image, ["sh", "-c", "read a; echo got:$a; echo err >&2"], stdin_open=True, name=name("attach"))
    sock = api.attach_socket(c.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    c.start()
    raw = sock._sock
    raw.sendall(b"sock\n")
    got = demux(read_to_eof(raw))
    assert got == {1: b"got:sock\n", 2: b"err\n"}, got
    assert c.wait(timeout=30)["StatusCode"] == 0
    c.remove()

    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as t:
        df = f"FROM {image}\nRUN echo built-{prefix} > /b\nCMD cat /b\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(df)
        t.addfile(info, io.BytesIO(df))
    ctx.seek(0)
    img, logs = client.images.build(fileobj=ctx, custom_context=True, tag=tag, rm=True)
    assert client.containers.run(tag, remove=True) == f"built-{prefix}\n".encode()
    assert img.id == direct.images.get(tag).id

    vol = client.volumes.create(name("vol"))
    net = client.networks.create(name("net"))
    assert any(v.name == vol.name for v in client.volumes.list())
    assert any(n.name == net.name for n in client.networks.list())
    assert client.api.inspect_volume(vol.name) == direct.api.inspect_volume(vol.name)
    assert client.api.inspect_network(net.id) == direct.api.inspect_network(net.id)
    vol.remove()
    net.remove()

    since = time.time() - 1
    c = client.containers.run(image, ["true"], detach=True, name=name("ev"))
    c.wait()
    c.remove()
    until = time.time()
    events = list(client.events(since=since, until=until, decode=True, filters={"container": c.id}))
    actions = [e.get("Action") for e in events]
    for a in ("create", "start", "die", "destroy"):
        assert a in actions, (a, actions)
    assert events == list(direct.events(since=since, until=until, decode=True, filters={"container": c.id})), events

    client.images.remove(tag)
    print("all SDK flows passed")
finally:
    try:
        direct.images.remove(tag, force=True)
    except Exception:
        pass
    for n in created:
        # On the daemon's own socket: cleanup must work even if the proxy is what failed.
        for remove in (lambda: direct.containers.get(n).remove(force=True), lambda: direct.volumes.get(n).remove(force=True), lambda: direct.networks.get(n).remove()):
            try:
                remove()
            except Exception:
                pass

"""Issue 17 through a job socket with the Python docker SDK: what SDK users do, each answered as
the daemon answers it. DOCKER_HOST is the job socket; BUSYBOX the shared test image."""
import io
import os
import sys
import tarfile

import docker

BUSYBOX = os.environ["BUSYBOX"]
c = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="auto")


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


# Build without a tag, run by the ID the build gave.
ctx = io.BytesIO()
with tarfile.open(fileobj=ctx, mode="w") as t:
    df = f"FROM {BUSYBOX}\nRUN echo sdk > /marker\n".encode()
    info = tarfile.TarInfo("Dockerfile")
    info.size = len(df)
    t.addfile(info, io.BytesIO(df))
ctx.seek(0)
img, _ = c.images.build(fileobj=ctx, custom_context=True)
check(img.tags == [], f"untagged build has no tags: {img.tags}")
out = c.containers.run(img.id, ["cat", "/marker"], remove=True)
check(out.strip() == b"sdk", f"run by ID: {out!r}")
check(any(i.id == img.id for i in c.images.list(filters={"dangling": True})), "dangling=true lists it")

# Commit without a name, get it by ID.
ctr = c.containers.create(img.id, ["true"], name="sdk-c")
committed = ctr.commit()
check(c.images.get(committed.id).id == committed.id, "commit by ID")
check(c.images.get(committed.short_id).id == committed.id, "commit by short ID")
ctr.remove()

# Config.Image as written.
ctr = c.containers.create(BUSYBOX.rsplit(":", 1)[0], ["true"], name="sdk-w")
check(ctr.attrs["Config"]["Image"] == BUSYBOX.rsplit(":", 1)[0], f"Config.Image: {ctr.attrs['Config']['Image']}")
ctr.remove()

# Networks: a name with a space, IPAM in the pool, connect with aliases, disconnect.
ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.200.250.0/24")])
net = c.networks.create("sdk net", ipam=ipam)
check(net.name == "sdk net", f"network name: {net.name}")
ctr = c.containers.run(BUSYBOX, ["sleep", "60"], detach=True, name="sdk-n")
net.connect(ctr, aliases=["alias1"])
net.reload()
check(ctr.id in net.attrs["Containers"], "connected")
ctr.reload()
aliases = ctr.attrs["NetworkSettings"]["Networks"]["sdk net"]["Aliases"] or []
check("alias1" in aliases, f"aliases: {aliases}")
net.disconnect(ctr)
ctr.remove(force=True)
net.remove()

# Volumes: the local driver with labels; driver options (o=bind, device=) are a documented
# refusal of the conservative policy (they bind host paths).
vol = c.volumes.create("sdk-vol", driver="local", labels={"a": "b"})
check(vol.name == "sdk-vol" and vol.attrs["Labels"] == {"a": "b"}, f"volume: {vol.attrs}")
vol.remove()
try:
    c.volumes.create("sdk-opt", driver="local", driver_opts={"type": "tmpfs", "device": "tmpfs"})
    check(False, "driver options were accepted")
except docker.errors.APIError as e:
    check(e.status_code == 403 and "not allowed by policy conservative" in str(e), f"driver options: {e}")

# Swarm teardown code works on a node without a swarm: the SDK takes dockerd's 503 "not part of
# a swarm" as done (a 403 would raise).
check(c.swarm.leave(force=True) is True, "swarm leave --force")
try:
    c.swarm.leave()
    check(False, "swarm leave succeeded")
except docker.errors.APIError as e:
    check(e.status_code == 503 and "not part of a swarm" in str(e), f"swarm leave: {e}")

# Prune, df.
c.images.prune(filters={"dangling": True})
df = c.df()
check(all(i["Id"] != img.id for i in df["Images"]), "pruned image gone from df")
print("ok")

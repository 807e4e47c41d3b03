"""Issue 17, differential: the Python docker SDK's usual calls, run once on the daemon's own socket
and once through a job socket with the same names (tests/compat.rs `differential_python_sdk`).
Each step prints one line `label<TAB>json` of what the SDK returned or raised; the Rust side
compares the two transcripts (IDs and digests aside). Environment: DOCKER_HOST, BUSYBOX, PREFIX
(names), REG (a registry of this side's own), SUBNET/GATEWAY/IP (IPAM), JOB=1 through the job socket."""
import io
import json
import os
import re
import sys
import tarfile
import threading
import time

import docker

BUSYBOX = os.environ["BUSYBOX"]
P = os.environ["PREFIX"]
REG = os.environ["REG"]
c = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="auto", timeout=300)
LABEL = {"cmp": P}
LF = {"label": f"cmp={P}"}


def step(label, fn):
    try:
        r = fn()
        out = {"ok": r}
    except docker.errors.APIError as e:
        out = {"status": e.status_code, "error": str(e.explanation)}
    except docker.errors.ContainerError as e:
        out = {"exit": e.exit_status, "stderr": e.stderr.decode() if e.stderr else None}
    except Exception as e:  # what the SDK raised is the answer too
        out = {"exception": type(e).__name__ + ": " + str(e)}
    print(label + "\t" + json.dumps(out, sort_keys=True, default=str), flush=True)
    return out.get("ok")


def tar_of(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def names_in(chunks):
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return sorted(re.sub("[0-9a-f]{64}", "<id>", m.name) for m in t.getmembers() if not m.name.startswith("blobs/sha256/"))


# Event subscriptions from the start, read once each object's `destroy` (the scenario's last
# event for it) has arrived: a `since` replay would read the daemon's 256-event buffer, which other
# tests' events overrun.
watches = {}


def watch(label, filters, shape, end):
    """Each subscription also names an object made and removed at the very end (`end`): its
    `destroy` is the last event it gets (a prune's removals log no `destroy` for volumes)."""
    got = []
    stream = c.events(filters=filters, decode=True)

    def run():
        for e in stream:
            got.append(shape(e))
            if e["Action"] == "destroy" and end in (e["Actor"]["ID"], e["Actor"]["Attributes"].get("name")):
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    watches[label] = (t, got, stream)


name_of = lambda e: (e["Type"], e["Action"], e["Actor"]["Attributes"].get("name"))
watch("events container", {"container": [f"{P}-c", f"{P}-endc"], "type": "container"}, name_of, f"{P}-endc")
watch("events network", {"network": [f"{P} net", f"{P}-endn"]}, name_of, f"{P}-endn")
watch("events volume", {"volume": [f"{P}-vol", f"{P}-endv"]}, lambda e: (e["Type"], e["Action"], e["Actor"]["ID"]), f"{P}-endv")
df = f"FROM {BUSYBOX}\nLABEL cmp={P}\nRUN echo {P} > /marker\nCMD [\"cat\", \"/marker\"]\n".encode()
ctx = tar_of({"Dockerfile": df})

# build, tag
img = step("build tagged", lambda: c.images.build(fileobj=io.BytesIO(ctx), custom_context=True, tag=f"{P}-img:1")[0].tags)
unt = step("build untagged", lambda: c.images.build(fileobj=io.BytesIO(ctx), custom_context=True, buildargs={"X": "1"})[0].id)
step("run untagged", lambda: c.containers.run(unt, remove=True).decode())
step("images.get untagged", lambda: c.images.get(unt).tags)
step("images.get short", lambda: c.images.get(unt[7:19]).id == unt)
step("dangling", lambda: unt in [i.id for i in c.images.list(filters={"dangling": True, **LF})])
step("tag", lambda: c.images.get(f"{P}-img:1").tag(f"{P}-img", "2"))
step("images.list reference", lambda: sorted(t for i in c.images.list(name=f"{P}-img") for t in i.tags))
step("inspect labels", lambda: c.images.get(f"{P}-img:2").labels)

# run, logs, exec, cp, diff
step("run exit 3", lambda: c.containers.run(f"{P}-img:1", ["sh", "-c", "echo out; echo err >&2; exit 3"], name=f"{P}-c0", labels=LABEL).decode())
ctr = c.containers.run(f"{P}-img:1", ["sh", "-c", "echo out; echo err >&2; echo hi > /f"], name=f"{P}-c", labels=LABEL, detach=True)
step("wait", lambda: ctr.wait()["StatusCode"])
# stdout and stderr are copied by two goroutines: their order in the log is not the client's.
step("logs", lambda: sorted(ctr.logs().decode().splitlines()))
step("logs stderr", lambda: ctr.logs(stdout=False).decode())
step("attrs", lambda: [ctr.attrs["Name"], ctr.attrs["Config"]["Image"], ctr.attrs["Config"]["Labels"]] if ctr.reload() is None else None)
step("diff", lambda: sorted((d["Path"], d["Kind"]) for d in ctr.diff()))
step("get_archive", lambda: names_in(ctr.get_archive("/f")[0]) + [ctr.get_archive("/f")[1]["name"]])
step("get_archive missing", lambda: ctr.get_archive("/nowhere"))
step("put_archive", lambda: ctr.put_archive("/", tar_of({"in": b"in\n"})))
step("diff after put", lambda: sorted((d["Path"], d["Kind"]) for d in ctr.diff()))
c2 = c.containers.run(BUSYBOX, ["sleep", "300"], name=f"{P}-c2", labels=LABEL, detach=True)
step("exec_run", lambda: list(c2.exec_run(["sh", "-c", "echo $((6*7)) $X $(pwd)"], environment={"X": "y"}, workdir="/tmp")))
step("exec_run exit", lambda: c2.exec_run(["sh", "-c", "exit 5"]).exit_code)
step("exec_run demux", lambda: c2.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True).output)

# commit, export, import, save, load
step("commit named", lambda: c.images.get(ctr.commit(f"{P}-img", "c", message="msg", changes=["ENV A=b"]).id).tags)
step("run committed", lambda: c.containers.run(f"{P}-img:c", ["sh", "-c", "cat /f /in; echo $A"], remove=True).decode())
committed = step("commit unnamed", lambda: ctr.commit().id)
step("get committed", lambda: c.images.get(committed).tags)
exported = b"".join(ctr.export())
step("export", lambda: names_in([exported]))
step("import named", lambda: (c.api.import_image_from_data(exported, repository=f"{P}-img", tag="imp"), c.images.get(f"{P}-img:imp").tags)[1])
step("import unnamed", lambda: json.loads(c.api.import_image_from_data(exported).splitlines()[-1]).get("status", "")[:7])
step("import ONBUILD", lambda: c.api.import_image_from_data(exported, changes=["ONBUILD RUN true"]))
saved = b"".join(c.images.get(f"{P}-img:1").save(named=True))
step("save", lambda: names_in([saved]))
step("save manifest", lambda: [m["RepoTags"] for m in json.loads(tarfile.open(fileobj=io.BytesIO(saved)).extractfile("manifest.json").read())])
step("remove", lambda: c.images.remove(f"{P}-img:1"))
step("load", lambda: [i.tags for i in c.images.load(saved)])
step("load broken", lambda: c.images.load(b"not a tar archive at all, " * 40))

# push, pull
remote = f"{REG}/{P}/img"
step("tag remote", lambda: c.images.get(f"{P}-img:1").tag(remote, "1"))
step("push", lambda: [json.loads(l).get("status", json.loads(l).get("error")) for l in c.images.push(remote, "1").splitlines() if "status" in l or "error" in l][-1][:10])
step("remove remote", lambda: len(c.images.remove(f"{remote}:1")) > 0)
step("pull", lambda: c.images.pull(remote, "1").tags)
step("pull missing", lambda: c.images.pull(f"{REG}/{P}/missing", "1"))

# networks: IPAM, aliases, connect, disconnect
ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=os.environ["SUBNET"], gateway=os.environ["GATEWAY"])])
net = c.networks.create(f"{P} net", ipam=ipam, labels=LABEL)
step("network attrs", lambda: [net.attrs["Name"], net.attrs["Driver"], net.attrs["IPAM"], net.attrs["Labels"]] if net.reload() is None else None)
c3 = c.containers.create(BUSYBOX, ["sleep", "300"], name=f"{P}-c3", labels=LABEL)
step("connect", lambda: net.connect(c3, aliases=["alias1"], ipv4_address=os.environ["IP"]))
c3.start()
# (The default network is the namespace's own `bridge`, a user-defined network with addresses
# from the pool: documented in docs/namespaces.md, left out here.)
step("container networks", lambda: [(k, v["IPAddress"], sorted(re.sub("^[0-9a-f]{12}$", "<id>", a) for a in v.get("Aliases") or []), v.get("IPAMConfig")) for k, v in sorted(c3.attrs["NetworkSettings"]["Networks"].items()) if k != "bridge"] if c3.reload() is None else None)
step("network containers", lambda: [v["Name"] for v in net.attrs["Containers"].values()] if net.reload() is None else None)
step("resolve alias", lambda: c.containers.run(BUSYBOX, ["sh", "-c", "nslookup alias1 >/dev/null && echo found"], network=f"{P} net", remove=True).decode())
step("disconnect", lambda: net.disconnect(c3))
step("disconnect again", lambda: net.disconnect(c3))
step("networks.list", lambda: sorted(n.name for n in c.networks.list(filters=LF)))

# volumes: driver, labels, options
vol = c.volumes.create(f"{P}-vol", driver="local", labels=LABEL)
step("volume attrs", lambda: [vol.attrs["Name"], vol.attrs["Driver"], vol.attrs["Labels"], vol.attrs["Options"], vol.attrs["Scope"]])
step("volume use", lambda: c.containers.run(BUSYBOX, ["sh", "-c", "echo x > /v/x; cat /v/x"], volumes={f"{P}-vol": {"bind": "/v"}}, remove=True).decode())
step("volume driver options", lambda: c.volumes.create(f"{P}-opts", driver="local", driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}).name)
step("volume unknown driver", lambda: c.volumes.create(f"{P}-nd", driver="no-such-driver").name)
step("volumes.list", lambda: sorted(v.name for v in c.volumes.list(filters=LF)))

# prune, each kind
for x in (c2, c3, ctr):
    x.remove(force=True)
step("containers.prune", lambda: bool(c.containers.prune(filters=LF)["ContainersDeleted"]))
step("networks.prune", lambda: sorted(c.networks.prune(filters=LF)["NetworksDeleted"] or []))
step("volumes.prune", lambda: sorted(c.volumes.prune(filters={"all": "true", **LF} if c.api._version >= "1.42" else LF)["VolumesDeleted"] or []))
step("images.prune dangling", lambda: bool(c.images.prune(filters={"dangling": True, **LF})["ImagesDeleted"]))
step("images.get pruned", lambda: c.images.get(unt).id)
for ref in (f"{remote}:1", f"{P}-img:c", f"{P}-img:imp", committed):
    step("remove " + ref.replace(REG, "<reg>"), lambda: bool(c.images.remove(ref)))
step("images.prune all", lambda: sorted(d["Untagged"] for d in c.images.prune(filters={"dangling": False, **LF})["ImagesDeleted"] or [] if not d.get("Untagged", "sha256:").startswith("sha256:")))
step("images left", lambda: c.images.list(name=f"{P}-img"))
# events, filtered by the names the client knows
c.containers.create(BUSYBOX, ["true"], name=f"{P}-endc").remove()
c.networks.create(f"{P}-endn").remove()
c.volumes.create(f"{P}-endv").remove()
for label, (t, got, stream) in watches.items():
    t.join(120)
    step(label, lambda: list(got) if not t.is_alive() else ["no destroy event"] + list(got))
    stream.close()
if os.environ.get("JOB"):
    # system df: only the namespace's objects (the job side only: the daemon's lists everything).
    d = c.df()
    ids = sorted(i.id for i in c.images.list(all=True))
    check = (sorted(i["Id"] for i in d["Images"]) == ids, sorted(x["Id"] for x in d["Containers"]) == sorted(x.id for x in c.containers.list(all=True)), sorted(v["Name"] for v in d["Volumes"]) == sorted(v.name for v in c.volumes.list()))
    print("system df\t" + json.dumps(check), flush=True)

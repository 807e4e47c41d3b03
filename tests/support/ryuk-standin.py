#!/usr/bin/python3
"""A stand-in for Testcontainers' Ryuk (github.com/testcontainers/moby-ryuk), for tests only.

Ryuk's protocol, as the Testcontainers libraries use it: listen on TCP 8080; each line a client
sends is a filter set in URL query form (`label=org.testcontainers.session-id=<id>`), answered
with `ACK`. Once every connection is closed and no new one came within
RYUK_RECONNECTION_TIMEOUT (default 10s), remove the containers, networks, volumes and images that
match any of the filters, through the Docker socket mounted at /var/run/docker.sock, and exit.
Without any connection within RYUK_CONNECTION_TIMEOUT (default 60s) it exits too.
"""

import os
import socket
import sys
import threading
import time
import urllib.parse

import docker


def seconds(value, default):
    value = (value or default).strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if value.endswith(unit) and value[: -len(unit)].replace(".", "", 1).isdigit():
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


RECONNECTION = seconds(os.environ.get("RYUK_RECONNECTION_TIMEOUT"), "10s")
CONNECTION = seconds(os.environ.get("RYUK_CONNECTION_TIMEOUT"), "60s")

lock = threading.Lock()
filters = []  # one dict per line, e.g. {"label": ["org.testcontainers.session-id=..."]}
state = {"open": 0, "seen": False, "last_close": time.monotonic()}


def log(*args):
    print(time.strftime("%Y/%m/%d %H:%M:%S"), *args, flush=True)


def serve(conn):
    with conn:
        pending = b""
        while True:
            data = conn.recv(4096)
            if not data:
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                line = line.decode("utf-8", "replace").strip()
                if not line:
                    continue
                parsed = {}
                for key, value in urllib.parse.parse_qsl(line, keep_blank_values=True):
                    parsed.setdefault(key, []).append(value)
                with lock:
                    filters.append(parsed)
                log("adding filter", line)
                conn.sendall(b"ACK\n")
    with lock:
        state["open"] -= 1
        state["last_close"] = time.monotonic()
    log("client disconnected")


def accept(server):
    while True:
        conn, peer = server.accept()
        with lock:
            state["open"] += 1
            state["seen"] = True
        log("new client connected:", peer[0])
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def prune():
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock")
    with lock:
        sets = list(filters)
    removed = {"containers": 0, "networks": 0, "volumes": 0, "images": 0}
    for f in sets:
        for c in client.containers.list(all=True, filters=f):
            try:
                c.remove(force=True, v=True)
                removed["containers"] += 1
            except docker.errors.NotFound:
                pass
        for n in client.networks.list(filters=f):
            try:
                n.remove()
                removed["networks"] += 1
            except docker.errors.NotFound:
                pass
        for v in client.volumes.list(filters=f):
            try:
                v.remove(force=True)
                removed["volumes"] += 1
            except docker.errors.NotFound:
                pass
        for i in client.images.list(filters=f):
            try:
                client.images.remove(i.id, force=True)
                removed["images"] += 1
            except docker.errors.NotFound:
                pass
    log("removed", " ".join(f"{k}={v}" for k, v in removed.items()))


def main():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 8080))
    server.listen(16)
    threading.Thread(target=accept, args=(server,), daemon=True).start()
    log("Started!")
    started = time.monotonic()
    while True:
        time.sleep(0.2)
        with lock:
            seen, open_, last = state["seen"], state["open"], state["last_close"]
        if not seen and time.monotonic() - started > CONNECTION:
            log("no client connected: exiting")
            return 0
        if seen and open_ == 0 and time.monotonic() - last > RECONNECTION:
            break
    prune()
    return 0


if __name__ == "__main__":
    sys.exit(main())

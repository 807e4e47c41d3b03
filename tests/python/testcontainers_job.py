"""A CI job's Testcontainers test, with no Testcontainers settings of its own (tests/executor_parity.rs).

`run`: starts a web server container with testcontainers-python, reaches it at the host and port
the library picks, checks that Ryuk runs (the session's filter acknowledged) and leaves a second
container running without stopping it, for Ryuk to remove once this process (its connection) ends.
`reaped SESSION`: waits until Ryuk removed the left container and itself.
"""

import os
import sys
import time
import urllib.request

import docker


def run():
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.labels import SESSION_ID

    print("settings:", sorted(k for k in os.environ if k.startswith(("TESTCONTAINERS_", "TC_", "RYUK_"))), flush=True)
    page = "mkdir /www && echo served-by-the-sibling > /www/index.html && exec httpd -f -p 8080 -h /www"
    server = DockerContainer("ctproxy-test/busybox").with_command(["sh", "-c", page]).with_exposed_ports(8080)
    server.start()
    host, port = server.get_container_host_ip(), server.get_exposed_port(8080)
    print(f"testcontainers picked {host}:{port}", flush=True)
    body, last = None, None
    for _ in range(100):  # httpd may not listen yet
        try:
            body = urllib.request.urlopen(f"http://{host}:{port}/", timeout=5).read().decode()
            break
        except OSError as e:
            last = e
            time.sleep(0.2)
    if body is None:
        sys.exit(f"the container is not reachable at {host}:{port}: {last}")
    print("answer:", body.strip(), flush=True)

    client = docker.from_env()
    ryuk = client.containers.get(f"testcontainers-ryuk-{SESSION_ID}")
    # The library sends the session's filter without waiting for Ryuk's ACK.
    wanted = f"adding filter label=org.testcontainers.session-id={SESSION_ID}"
    for _ in range(150):
        logs = ryuk.logs().decode()
        if wanted in logs:
            break
        time.sleep(0.2)
    ryuk.reload()
    print(f"ryuk: {ryuk.status}, image {ryuk.image.tags}\n{logs}", flush=True)
    assert ryuk.status == "running", ryuk.status
    assert wanted in logs, logs

    left = DockerContainer("ctproxy-test/busybox").with_command(["sleep", "3600"]).start()
    print(f"left for ryuk: {left._container.name}", flush=True)
    server.stop()
    with open("tc-session", "w") as f:
        f.write(SESSION_ID)
    print("testcontainers-run-passed", flush=True)


def reaped(session):
    client = docker.from_env()
    label = f"org.testcontainers.session-id={session}"
    # The plain listing: `containers.list` inspects each one it lists, and Ryuk removes them meanwhile.
    for _ in range(900):
        left = client.api.containers(all=True, filters={"label": label})
        ryuk = client.api.containers(all=True, filters={"name": f"testcontainers-ryuk-{session}"})
        if not left and not ryuk:
            print("ryuk-reaped-the-session", flush=True)
            return
        time.sleep(0.2)
    sys.exit(f"still there after the session ended: {[c['Names'] for c in left]} ryuk: {[c['Names'] for c in ryuk]}")


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run()
    else:
        reaped(sys.argv[2])

#!/usr/bin/env python3
"""Private RabbitMQ nodes for dotspool's amqp:// tests (issue 18).

Debian's rabbitmq-server (3.10), never the system instance: each node has its own node name
(dsN@localhost), AMQP port, distribution port, data and log directories, configuration and
Erlang cookie (its own HOME), and one epmd of our own on its own port, all inside the test's
loopback-only network namespace (tests/peer/peers.py netns_enter). Every process is started in
its own session and stopped by its PID (SIGTERM, bounded wait, SIGKILL to the group).

    c = Cluster(tmpdir, nodes=1)     c.start()   (nodes in parallel; classic_config peer
                                     discovery forms the cluster at first boot)
    c.nodes[i].port                  AMQP port on 127.0.0.1
    c.nodes[i].kill() / .start()     kill -9 a node, bring it back (same data)
    c.stop()
    declare(port, exchange, queue, key, quorum_size=None)   pika: a durable direct exchange and
                                     a quorum queue bound to it
    drain(port, queue, ...)          pika: read (and ack) what the queue holds

A node takes ~5 s to start on this machine (Erlang VM + Mnesia); start_s says how long.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

RABBIT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "/usr/bin/epmd"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class RabbitError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            # AMQP answers a bad protocol header with its own header: the broker is listening.
            return s is not None
    except OSError:
        return False


def _stop_group(proc, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class Node:
    def __init__(self, cluster, idx):
        self.cluster = cluster
        self.idx = idx
        self.name = "ds%d@localhost" % (idx + 1)
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = os.path.join(cluster.dir, "n%d" % (idx + 1))
        self.proc = None
        self.start_s = None
        os.makedirs(os.path.join(self.dir, "home"), exist_ok=True)
        cookie = os.path.join(self.dir, "home", ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write(cluster.cookie)
        os.chmod(cookie, 0o400)

    def env(self):
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("RABBITMQ_") or k.startswith("ERL_"):
                del e[k]
        e.update({
            "HOME": os.path.join(self.dir, "home"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq"),  # .conf appended
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.dir, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "pid"),
            "ERL_EPMD_PORT": str(self.cluster.epmd_port),
            "RABBITMQ_ALLOW_INPUT": "",
        })
        return e

    def write_config(self):
        nodes = "".join("cluster_formation.classic_config.nodes.%d = %s\n" % (i + 1, n.name)
                        for i, n in enumerate(self.cluster.nodes))
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write("listeners.tcp.default = 127.0.0.1:%d\n" % self.port)
            f.write("loopback_users = none\n")
            f.write("disk_free_limit.absolute = 50MB\n")
            f.write("log.file.level = warning\n")
            f.write("log.console = false\n")
            if len(self.cluster.nodes) > 1:
                f.write("cluster_formation.peer_discovery_backend = classic_config\n" + nodes)
        with open(os.path.join(self.dir, "advanced.config"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")

    def spawn(self):
        self.write_config()
        self.out = open(os.path.join(self.dir, "stdout.%d" % int(time.time() * 1000)), "wb")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([RABBIT], env=self.env(), stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir)

    def wait_up(self, timeout=START_TIMEOUT_S):
        while time.monotonic() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RabbitError("%s exited at start (%s): %s" % (self.name, self.proc.returncode, self.tail()))
            if _port_open(self.port):
                self.start_s = time.monotonic() - self.t0
                return self
            time.sleep(0.1)
        raise RabbitError("%s not listening after %.0f s: %s" % (self.name, timeout, self.tail()))

    def start(self):
        self.spawn()
        return self.wait_up()

    def tail(self, n=2000):
        try:
            with open(self.out.name, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """kill -9: the node crashes (the whole process group: beam and its helpers)."""
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self):
        _stop_group(self.proc)

    def ctl(self, *args, timeout=60):
        """rabbitmqctl against this node (each call boots an Erlang VM: ~0.5 s)."""
        return subprocess.run(["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", self.name] + list(args),
                              env=self.env(), capture_output=True, text=True, timeout=timeout)


class Cluster:
    def __init__(self, tmpdir, nodes=1):
        self.dir = tmpdir
        self.cookie = "DOTSPOOLTEST%d" % os.getpid()
        self.epmd_port = free_port()
        self.epmd = None
        self.nodes = []
        for i in range(nodes):
            self.nodes.append(Node(self, i))

    def start(self):
        if not os.access(RABBIT, os.X_OK):
            raise RabbitError("%s missing (scripts/deps.sh installs rabbitmq-server)" % RABBIT)
        self.epmd_log = open(os.path.join(self.dir, "epmd.log"), "wb")
        self.epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port)], stdin=subprocess.DEVNULL,
                                     stdout=self.epmd_log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while not _port_open(self.epmd_port):
            if time.monotonic() - t0 > 10:
                raise RabbitError("epmd did not start")
            time.sleep(0.05)
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            n.wait_up()
        if len(self.nodes) > 1:
            self.wait_cluster()
        return self

    def wait_cluster(self, timeout=60):
        """Every node sees every other (classic_config discovery at first boot)."""
        t0 = time.monotonic()
        want = sorted(n.name for n in self.nodes)
        while time.monotonic() - t0 < timeout:
            r = self.nodes[0].ctl("eval", "lists:sort(rabbit_nodes:all_running()).")
            if r.returncode == 0 and all(n in r.stdout for n in want):
                return
            time.sleep(0.5)
        raise RabbitError("cluster did not form: %s" % r.stdout + r.stderr)

    def stop(self):
        for n in self.nodes:
            n.stop()
        _stop_group(self.epmd)


def _pika():
    try:
        import pika  # Debian's python3-pika (scripts/deps.sh)
    except ImportError:
        # ctest may run another python3 (pyenv) than Debian's: pika is pure Python.
        import sys
        sys.path.append("/usr/lib/python3/dist-packages")
        import pika
    return pika


def connect(port):
    pika = _pika()
    params = pika.ConnectionParameters(host="127.0.0.1", port=port,
                                       credentials=pika.PlainCredentials("guest", "guest"),
                                       connection_attempts=3, retry_delay=0.5, blocked_connection_timeout=30)
    return pika.BlockingConnection(params)


def declare(port, exchange, queue, key, quorum_size=None):
    """A durable direct exchange and a quorum queue bound to it with key."""
    c = connect(port)
    try:
        ch = c.channel()
        ch.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
        args = {"x-queue-type": "quorum"}
        if quorum_size:
            args["x-quorum-initial-group-size"] = quorum_size
        ch.queue_declare(queue=queue, durable=True, arguments=args)
        ch.queue_bind(queue=queue, exchange=exchange, routing_key=key)
    finally:
        c.close()


def queue_depth(port, queue):
    c = connect(port)
    try:
        return c.channel().queue_declare(queue=queue, passive=True).method.message_count
    finally:
        c.close()


def drain(port, queue, want=None, timeout=20.0, idle_s=1.0):
    """Read and ack messages until `want` were read (or the queue stays idle for idle_s once
    want is None), at most timeout seconds. Returns [(properties, body)]."""
    c = connect(port)
    out = []
    try:
        ch = c.channel()
        ch.basic_qos(prefetch_count=500)
        t0 = time.monotonic()
        last = time.monotonic()
        for method, props, body in ch.consume(queue, inactivity_timeout=0.2):
            if method is not None:
                out.append((props, body))
                ch.basic_ack(method.delivery_tag)
                last = time.monotonic()
            if want is not None and len(out) >= want:
                break
            if want is None and time.monotonic() - last > idle_s:
                break
            if time.monotonic() - t0 > timeout:
                break
        ch.cancel()
    finally:
        c.close()
    return out

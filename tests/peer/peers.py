#!/usr/bin/env python3
"""Real next hops for dotspool's delivery tests: private Postfix, Dovecot LMTP and smtp-sink.

Python 3 stdlib only; needs root and the Debian packages postfix, dovecot-core, dovecot-lmtpd
(scripts/deps.sh). Every peer is a PRIVATE instance: its own configuration, queue, data, log
and mail directories under a test directory, its own port or socket; the system instances and
/etc/postfix/main.cf are never used. Each is started in its own session (process group) and
stopped by its own PID: SIGTERM to its main process, a bounded wait for the whole group to be
gone, then SIGKILL to the group.

    netns_enter()                    first thing in a test: re-exec inside a loopback-only netns
    make_test_dir()                  a /tmp directory unprivileged peer processes can traverse
    Postfix(tmpdir, port, rcpt_replies=None)   smtpd on 127.0.0.1:port, mail handed to
                                     pipe_deliver.py, stored byte for byte under <dir>/out
    DovecotLmtp(tmpdir, socket_path, users=None)   LMTP on a unix socket, Maildirs per user
    SmtpSink(tmpdir, port=None, unix_path=None, lmtp=False, ...)   smtp-sink, for load
    free_port()                      a free TCP port on 127.0.0.1

Each peer: start() (returns once it greets with 220, at most START_TIMEOUT_S; startup_s says
how long it took), stop() (idempotent; [] when it stopped cleanly), kill() (SIGKILL: a crashed
next hop; start() again works on the same port/socket and mail store), running(), pids() (its
live processes; [] after stop), usable as a context manager. Typical start-up: 0.05-0.1 s.
"""

import atexit
import dataclasses
import fcntl
import glob
import json
import os
import pwd
import grp
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PIPE_DELIVER = os.path.join(HERE, "pipe_deliver.py")
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
SMTP_SINK = "/usr/sbin/smtp-sink"
DOVECOT = "/usr/sbin/dovecot"


class PeerError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Network namespace

def _lo_up():
    """Bring lo up with SIOCGIFFLAGS/SIOCSIFFLAGS (no dependency on iproute2's `ip`)."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def netns_enter():
    """Run the calling test inside a new network namespace that has only loopback.

    Call it first thing in a test script. Outside the namespace (DS_NETNS unset) it re-executes
    the same interpreter with the same arguments under `unshare -n` and never returns; inside it
    brings lo up and checks lo is the only interface, so dotspool and every peer share a private
    127.0.0.1 and nothing (not even a DNS query) can leave the machine. Needs root (CAP_SYS_ADMIN).
    """
    if os.environ.get("DS_NETNS") != "1":
        if shutil.which("unshare") is None:
            raise PeerError("unshare (util-linux) not found")
        argv = [sys.executable] + list(getattr(sys, "orig_argv", [sys.executable] + sys.argv)[1:])
        env = dict(os.environ, DS_NETNS="1")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvpe("unshare", ["unshare", "-n", "--"] + argv, env)
    _lo_up()
    ifaces = sorted(os.listdir("/sys/class/net"))
    if ifaces != ["lo"]:
        # /sys shows the namespace of whoever mounted it; trust /proc/net/dev instead.
        with open("/proc/net/dev") as f:
            ifaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
        if ifaces != ["lo"]:
            raise PeerError("not a loopback-only namespace: interfaces %s" % ifaces)


def in_netns():
    return os.environ.get("DS_NETNS") == "1"


def listening_tcp_ports(proc_net="/proc/net/tcp"):
    """Ports in LISTEN state in the namespace that /proc_net belongs to (IPv4 and IPv6)."""
    ports = set()
    for path in (proc_net, proc_net + "6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ---------------------------------------------------------------------------------------------
# Process helpers

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_banner(connect, deadline, proc, what):
    """Poll until a connection gets a 220 greeting; fail early if the process died."""
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError("%s exited with status %s while starting" % (what, proc.returncode))
        try:
            s = connect()
            try:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                line = s.recv(512)
                if line.startswith(b"220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return line
                last = line
            finally:
                s.close()
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise PeerError("%s did not answer within %.0f s (last: %r)" % (what, START_TIMEOUT_S, last))


def _tcp_connect(port):
    def c():
        return socket.create_connection(("127.0.0.1", port), timeout=1.0)
    return c


def _unix_connect(path):
    def c():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            s.close()
            raise
        return s
    return c


def _group_pids(pgid):
    """Live (non-zombie) processes in process group pgid, from /proc."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        if len(rest) > 2 and rest[0] != "Z" and int(rest[2]) == pgid:
            pids.append(int(d))
    return sorted(pids)


def _stop_group(proc, timeout=STOP_TIMEOUT_S):
    """SIGTERM the peer's main process (master shuts its children down itself), wait for its
    whole process group (it leads its own session) to be gone, SIGKILL the group if not.

    Returns the pids that had to be killed with SIGKILL (empty on a clean stop)."""
    if proc is None:
        return []
    pgid = proc.pid
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not _group_pids(pgid):
            return []
        time.sleep(0.05)
    killed = _group_pids(pgid)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=timeout)
    end = time.monotonic() + timeout
    while _group_pids(pgid) and time.monotonic() < end:
        time.sleep(0.05)
    return killed


def _ids(user):
    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid


def _traversable_by_all(path):
    """Postfix and Dovecot drop privileges: every ancestor must be searchable by others."""
    p = os.path.abspath(path)
    while True:
        if not os.stat(p).st_mode & 0o001:
            raise PeerError("%s is not searchable by other users (chmod o+x): unprivileged "
                            "Postfix/Dovecot processes could not reach the test directory" % p)
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent


def _system_python():
    """An interpreter the nobody user can run (sys.executable may live under /root)."""
    for p in ("/usr/bin/python3", sys.executable):
        if os.access(p, os.X_OK):
            return p
    raise PeerError("no python3 for the pipe transport")


def make_test_dir(prefix="dspeers-"):
    """A temporary directory under /tmp that unprivileged peer processes can traverse."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return d


def _drop_first_header(data):
    """data without its first header field (CRLF lines, with its folded continuations)."""
    i = 0
    while True:
        j = data.index(b"\r\n", i) + 2
        if data[j:j + 1] not in (b" ", b"\t"):
            return data[j:]
        i = j


def _tail(path, n=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-n:])
    except OSError:
        return ""


_LIVE = set()  # peers started and not yet stopped, stopped at exit if the test forgot


@atexit.register
def _stop_all():
    for peer in list(_LIVE):
        try:
            peer.stop()
        except Exception:
            pass


# The reaper: a tiny process (own session, so a ctest timeout that kills the test's process
# group spares it) reading "+pgid"/"-pgid" lines from a pipe only this test process holds.
# When the test dies in any way (SIGKILL, timeout) the pipe reaches EOF and the reaper stops
# every peer group still registered: SIGTERM to the leader, SIGKILL to the group after 3 s.
# (PR_SET_PDEATHSIG would not do: it is cleared when Postfix or smtp-sink change credentials.)
_REAPER_CODE = r"""
import os, signal, time
groups, buf = set(), b""
while True:
    chunk = os.read(0, 4096)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
def alive(g):
    try:
        os.killpg(g, 0)
        return True
    except OSError:
        return False
for g in groups:
    try:
        os.kill(g, signal.SIGTERM)
    except OSError:
        pass
end = time.monotonic() + 3
while any(alive(g) for g in groups) and time.monotonic() < end:
    time.sleep(0.05)
for g in groups:
    try:
        os.killpg(g, signal.SIGKILL)
    except OSError:
        pass
"""
_reaper = None


def _reaper_send(line):
    global _reaper
    if _reaper is None or _reaper.poll() is not None:
        _reaper = subprocess.Popen([sys.executable, "-c", _REAPER_CODE], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, start_new_session=True)
    _reaper.stdin.write(line)
    _reaper.stdin.flush()


class _Peer:
    """Common life cycle. A subclass sets self.dir and self.stdout_path and calls _spawn()."""
    proc = None
    pgid = None
    startup_s = None  # seconds from spawn to the first 220 greeting, last start()

    def _spawn(self, args, connect, what, logs):
        if self.running():
            raise PeerError("%s already started" % what)
        t0 = time.monotonic()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        with open(self.stdout_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         cwd=self.dir, env=env, start_new_session=True)
        self.pgid = self.proc.pid
        _LIVE.add(self)
        _reaper_send(b"+%d\n" % self.pgid)
        try:
            _wait_banner(connect, t0 + START_TIMEOUT_S, self.proc, what)
        except PeerError as e:
            self.stop()
            raise PeerError("%s; %s" % (e, "; ".join("%s: %s" % (p, _tail(p)) for p in logs)))
        except Exception:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self):
        """Stop it by its PID (SIGTERM, wait for the whole process group, SIGKILL after
        STOP_TIMEOUT_S). Idempotent. Returns the pids that needed SIGKILL ([] = clean)."""
        killed = _stop_group(self.proc)
        self._forget()
        return killed

    def _forget(self):
        if self.proc is not None and self.pgid is not None:
            _reaper_send(b"-%d\n" % self.pgid)
        self.proc = None
        _LIVE.discard(self)

    def pids(self):
        """Live processes of this peer's process group (also after stop(): should be [])."""
        return _group_pids(self.pgid) if self.pgid is not None else []

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL the whole process group at once: a next hop that crashes. Then start()
        works again (same port/socket, same stored mail)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        end = time.monotonic() + STOP_TIMEOUT_S
        while _group_pids(self.pgid) and time.monotonic() < end:
            time.sleep(0.02)
        self._forget()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


# ---------------------------------------------------------------------------------------------
# Postfix

@dataclasses.dataclass
class Delivered:
    """One message as a peer stored it."""
    path: str
    data: bytes
    sender: str = ""
    recipients: list = dataclasses.field(default_factory=list)
    queue_id: str = ""


POSTFIX_MASTER_CF = """\
# Private Postfix for a dotspool test: only what smtpd and the pipe transport need. No chroot.
{listen} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
dstest    unix  - n n - - pipe
  flags=q user=nobody null_sender=
  argv={python} {dir}/pipe_deliver.py --out {dir}/out --lf-to-crlf --queue-id ${{queue_id}} -f ${{sender}} -- ${{recipient}}
"""

POSTFIX_MAIN_CF = """\
# Private Postfix for a dotspool test. Never the system instance: everything under {dir}.
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test
mydomain = test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# No local delivery, no relay domains: every recipient goes to the dstest pipe transport.
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
default_transport = dstest
relay_transport = dstest
dstest_destination_recipient_limit = 1000
# Accept from loopback, nothing else; no checks that would need DNS.
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# Do not add Date/From/Message-ID/To to what loopback clients send: keep their bytes.
local_header_rewrite_clients =
always_add_missing_headers = no
# No throttling of a fast client (load tests), no error sleeps.
in_flow_delay = 0s
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
default_process_limit = 200
message_size_limit = {size_limit}
smtpd_banner = $myhostname ESMTP
biff = no
# Queue ids unique over time (short ones derive from inode numbers and repeat after a restart).
enable_long_queue_ids = yes
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
{extra}
"""

# queue_directory subdirectories and the ownership/mode `postfix set-permissions` would give them.
_PF_QUEUE_DIRS = {
    "active": ("postfix", None, 0o700), "bounce": ("postfix", None, 0o700),
    "corrupt": ("postfix", None, 0o700), "defer": ("postfix", None, 0o700),
    "deferred": ("postfix", None, 0o700), "flush": ("postfix", None, 0o700),
    "hold": ("postfix", None, 0o700), "incoming": ("postfix", None, 0o700),
    "private": ("postfix", None, 0o700), "saved": ("postfix", None, 0o700),
    "trace": ("postfix", None, 0o700), "maildrop": ("postfix", "postdrop", 0o1730),
    "public": ("postfix", "postdrop", 0o2710), "pid": ("root", None, 0o755),
}

_PF_QUEUED = re.compile(r"postfix/smtpd\[\d+\]: (\w+): client=")
_PF_MSGID = re.compile(r"postfix/cleanup\[\d+\]: (\w+): message-id=(.*)$")
_PF_STATUS = re.compile(r"postfix/pipe\[\d+\]: (\w+): to=<([^>]*)>.* status=(\w+)")


class Postfix(_Peer):
    """A private Postfix: smtpd on 127.0.0.1:port, every accepted message handed to
    pipe_deliver.py (as user nobody) which writes it byte for byte (CRLF restored) under
    <dir>/out; log in <dir>/maillog.

    Postfix adds one header at the top of every message: `Received: from <helo> (localhost
    [127.0.0.1]) by postfix.test (Postfix) with ESMTP id <queue id> for <rcpt>; <date>`,
    folded over several lines. Nothing else (no Return-Path, no Delivered-To: pipe flags
    R/D are off; no Message-ID/Date: local_header_rewrite_clients is empty).

    tmpdir: a directory every user can traverse (see make_test_dir()); the instance lives in
    a new subdirectory of it (self.dir). port: the TCP port on 127.0.0.1. rcpt_replies:
    {recipient address: "550 5.1.1 text" or "450 4.2.0 text"}, smtpd's RCPT reply for those
    (a check_recipient_access texthash table; others get 250). extra_main_cf: more main.cf
    lines (later lines win). size_limit: message_size_limit in bytes.
    """

    def __init__(self, tmpdir, port, rcpt_replies=None, extra_main_cf="",
                 size_limit=52428800):
        _traversable_by_all(tmpdir)
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="postfix-", dir=tmpdir)
        os.chmod(self.dir, 0o755)
        self.etc = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data_dir = os.path.join(self.dir, "data")
        self.out = os.path.join(self.dir, "out")
        self.maillog = os.path.join(self.dir, "maillog")
        self.stdout_path = os.path.join(self.dir, "master.out")
        self._extra = extra_main_cf
        self._rcpt_replies = dict(rcpt_replies or {})
        self._size_limit = size_limit
        self._setup()

    def _setup(self):
        pf_uid, pf_gid = _ids("postfix")
        nb_uid, nb_gid = _ids("nobody")
        os.makedirs(self.etc, 0o755)
        extra = self._extra
        if self._rcpt_replies:
            table = os.path.join(self.etc, "rcpt_access")
            with open(table, "w") as f:
                for addr, reply in self._rcpt_replies.items():
                    if not re.match(r"^[45]\d\d [245]\.\d{1,3}\.\d{1,3} \S", reply):
                        raise PeerError("rcpt reply %r: want '5xx x.y.z text'" % reply)
                    f.write("%s %s\n" % (addr, reply))
            extra = ("smtpd_recipient_restrictions = check_recipient_access texthash:%s\n"
                     % table) + extra
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN_CF.format(dir=self.dir, extra=extra,
                                           size_limit=self._size_limit))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(POSTFIX_MASTER_CF.format(listen="127.0.0.1:%d" % self.port,
                                             python=_system_python(), dir=self.dir))
        # Postfix waits (300 ms steps) while a table or main.cf looks "just edited" (mtime
        # not yet in the past): date them back so master starts at once instead of ~2 s.
        past = time.time() - 10
        for name in os.listdir(self.etc):
            os.utime(os.path.join(self.etc, name), (past, past))
        # A copy, so the nobody user needs no access to the source tree.
        shutil.copy(PIPE_DELIVER, os.path.join(self.dir, "pipe_deliver.py"))
        os.chmod(os.path.join(self.dir, "pipe_deliver.py"), 0o755)
        os.makedirs(self.queue, 0o755)
        for name, (owner, group, mode) in _PF_QUEUE_DIRS.items():
            p = os.path.join(self.queue, name)
            os.mkdir(p)
            uid = pf_uid if owner == "postfix" else 0
            gid = grp.getgrnam(group).gr_gid if group else (0 if owner == "root" else pf_gid)
            os.chown(p, uid, gid)
            os.chmod(p, mode)
        os.mkdir(self.data_dir)
        os.chown(self.data_dir, pf_uid, pf_gid)
        os.chmod(self.data_dir, 0o700)
        os.mkdir(self.out)
        os.chown(self.out, nb_uid, nb_gid)
        os.chmod(self.out, 0o755)

    def start(self):
        # master -d: stay in the foreground (we hold its PID). -c: our config directory;
        # master exports it to its children as MAIL_CONFIG. Running as root is what master
        # expects; it drops to mail_owner for every daemon except pipe (user=nobody).
        return self._spawn([POSTFIX_MASTER, "-c", self.etc, "-d"], _tcp_connect(self.port),
                           "postfix master", [self.stdout_path, self.maillog])

    def log_text(self):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def queued(self):
        """Queue ids of the messages smtpd accepted (log lines 'ID: client=...')."""
        return [m.group(1) for m in _PF_QUEUED.finditer(self.log_text())]

    def message_ids(self):
        """{Message-ID header value (with <>): [queue ids, in log order]} from cleanup's log
        lines (a list: the same message delivered twice has two queue ids)."""
        out = {}
        for line in self.log_text().splitlines():
            m = _PF_MSGID.search(line)
            if m:
                out.setdefault(m.group(2).strip(), []).append(m.group(1))
        return out

    def statuses(self):
        """[(queue id, recipient, status)] from the pipe transport's log lines
        (status: sent / deferred / bounced)."""
        return [(m.group(1), m.group(2), m.group(3))
                for m in _PF_STATUS.finditer(self.log_text())]

    def removed(self):
        """Queue ids qmgr is done with (log 'ID: removed': delivered, or bounced)."""
        return re.findall(r"postfix/qmgr\[\d+\]: (\w+): removed", self.log_text())

    def wait_removed(self, queue_ids, timeout=10.0):
        """Wait until Postfix has finished every one of queue_ids; returns those not done.
        Use this, not the files, before stopping Postfix: pipe_deliver.py writes a file before
        Postfix records the delivery, and a stop in between makes it deliver again."""
        deadline = time.monotonic() + timeout
        while True:
            left = set(queue_ids) - set(self.removed())
            if not left or time.monotonic() >= deadline:
                return sorted(left)
            time.sleep(0.05)

    def messages(self):
        """Every message handed on, in delivery order: [Delivered] (data with CRLF lines,
        starting with Postfix's Received header). One per pipe(8) delivery: a message with
        recipients in several domains appears once per domain, with the same queue_id; one
        delivered again after Postfix was stopped mid-delivery appears again."""
        out = []
        for meta_path in glob.glob(os.path.join(self.out, "*.json")):
            with open(meta_path) as f:
                meta = json.load(f)
            eml = meta_path[:-len(".json")] + ".eml"
            with open(eml, "rb") as f:
                data = f.read()
            out.append((meta.get("time", 0), Delivered(eml, data, meta["sender"],
                                                       meta["recipients"], meta["queue_id"])))
        return [d for _, d in sorted(out, key=lambda x: x[0])]

    def wait_messages(self, n, timeout=10.0):
        """Wait until at least n messages were handed on (smtpd's 250 comes before that)."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= n or time.monotonic() >= deadline:
                return msgs
            time.sleep(0.05)

    @staticmethod
    def strip_received(data):
        """The message without the Received header Postfix put on top (one, folded)."""
        if not data.startswith(b"Received:"):
            raise PeerError("no Received header on top: %r" % data[:40])
        return _drop_first_header(data)


# ---------------------------------------------------------------------------------------------
# Dovecot LMTP

DOVECOT_CONF = """\
# Private Dovecot for a dotspool test: LMTP only, on a unix socket, Maildirs under {dir}.
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
protocols = lmtp
ssl = no
hostname = dovecot.test
postmaster_address = postmaster@dovecot.test
mail_location = maildir:{dir}/mail/%u
mail_save_crlf = yes
mail_fsync = always
first_valid_uid = 1
first_valid_gid = 1
lmtp_save_to_detail_mailbox = no
default_internal_user = dovecot
default_login_user = dovenull
service lmtp {{
  unix_listener {socket} {{
    mode = 0666
  }}
}}
passdb {{
  driver = static
  args = nopassword=y
}}
{userdb}
"""

DOVECOT_USERDB_ALL = """\
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u allow_all_users=yes
}}
"""

DOVECOT_USERDB_LIST = """\
userdb {{
  driver = passwd-file
  args = {dir}/users
  default_fields = uid={uid} gid={gid} home={dir}/home/%u
}}
"""


class DovecotLmtp(_Peer):
    """A private Dovecot speaking LMTP on the unix socket socket_path, delivering to
    <dir>/mail/<user@domain>/ (a Maildir, files stored with CRLF lines: mail_save_crlf).

    users: None accepts every recipient; a list of addresses accepts only those, others get
    "550 5.1.1 <rcpt> User doesn't exist" at RCPT. Mail files belong to mail_user (default
    nobody).

    Dovecot adds three headers on top, in this order: `Return-Path: <sender>`,
    `Delivered-To: <rcpt>`, `Received: from <lhlo> by dovecot.test (Dovecot) with LMTP id ...
    for <rcpt>; <date>` (folded). The rest is the client's bytes.
    """

    def __init__(self, tmpdir, socket_path, users=None, mail_user="nobody"):
        _traversable_by_all(tmpdir)
        if len(socket_path.encode()) > 100:
            raise PeerError("socket path too long for sun_path: %s" % socket_path)
        self.socket_path = os.path.abspath(socket_path)
        self.dir = tempfile.mkdtemp(prefix="dovecot-", dir=tmpdir)
        os.chmod(self.dir, 0o755)
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.stdout_path = os.path.join(self.dir, "dovecot.out")
        self.mail = os.path.join(self.dir, "mail")
        self.users = list(users) if users is not None else None
        uid, gid = _ids(mail_user)
        for d in ("mail", "home"):
            os.mkdir(os.path.join(self.dir, d))
            os.chown(os.path.join(self.dir, d), uid, gid)
        if self.users is None:
            userdb = DOVECOT_USERDB_ALL.format(uid=uid, gid=gid, dir=self.dir)
        else:
            with open(os.path.join(self.dir, "users"), "w") as f:
                for u in self.users:
                    f.write("%s::::::\n" % u)
            userdb = DOVECOT_USERDB_LIST.format(uid=uid, gid=gid, dir=self.dir)
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(dir=self.dir, socket=self.socket_path, userdb=userdb))

    def start(self):
        # -F: foreground, so the PID we hold is dovecot's master.
        return self._spawn([DOVECOT, "-F", "-c", self.conf], _unix_connect(self.socket_path),
                           "dovecot", [self.stdout_path, self.log_path])

    def log_text(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def maildir(self, user):
        return os.path.join(self.mail, user)

    def messages(self, user):
        """Messages in user's INBOX (Maildir new/ and cur/), oldest first: [Delivered]."""
        out = []
        for sub in ("new", "cur"):
            for p in glob.glob(os.path.join(self.maildir(user), sub, "*")):
                with open(p, "rb") as f:
                    data = f.read()
                out.append((os.stat(p).st_mtime_ns, p,
                            Delivered(p, data, recipients=[user])))
        return [d for _, _, d in sorted(out, key=lambda x: (x[0], x[1]))]

    def all_users(self):
        try:
            return sorted(os.listdir(self.mail))
        except FileNotFoundError:
            return []

    @staticmethod
    def strip_added(data):
        """The message without the headers Dovecot's LMTP put on top: Return-Path, then
        Delivered-To (only when the transaction had one recipient), then one Received."""
        for name, required in ((b"Return-Path:", True), (b"Delivered-To:", False),
                               (b"Received:", True)):
            if data.startswith(name):
                data = _drop_first_header(data)
            elif required:
                raise PeerError("expected %r on top, got %r" % (name, data[:40]))
        return data


# ---------------------------------------------------------------------------------------------
# smtp-sink

class SmtpSink(_Peer):
    """Postfix's smtp-sink: accepts everything as fast as it can, keeps nothing (unless dump).

    tmpdir: where its output and dumps go (self.dir, a new subdirectory). port: TCP port on
    127.0.0.1, or unix_path instead for a unix socket. lmtp: speak LMTP (-L). backlog: listen
    backlog. dump: write each transaction to <dir>/dump/ (-d; a load test should not).
    extra_args: more smtp-sink options (e.g. ["-r", "rcpt"] to reject RCPT, ["-w", "2"] to
    delay DATA replies; see smtp-sink(1)).
    count() is the number of messages it accepted: from its -c running counter on stdout.
    """

    def __init__(self, tmpdir, port=None, unix_path=None, lmtp=False, backlog=1000,
                 dump=False, extra_args=()):
        _traversable_by_all(tmpdir)
        if (port is None) == (unix_path is None):
            raise PeerError("SmtpSink needs exactly one of port and unix_path")
        self.port = port
        self.unix_path = unix_path
        self.dir = tempfile.mkdtemp(prefix="sink-", dir=tmpdir)
        os.chmod(self.dir, 0o755)
        self.stdout_path = os.path.join(self.dir, "sink.out")
        self.dump_dir = os.path.join(self.dir, "dump")
        args = [SMTP_SINK, "-c", "-u", "nobody", "-h", "sink.test"]
        if lmtp:
            args.append("-L")
        if dump:
            os.mkdir(self.dump_dir)
            uid, gid = _ids("nobody")
            os.chown(self.dump_dir, uid, gid)
            args += ["-d", self.dump_dir + "/%H%M%S."]
        args += list(extra_args)
        args += ["unix:" + unix_path if unix_path else "127.0.0.1:%d" % port, str(backlog)]
        self.args = args

    def start(self):
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)  # left by a kill(): smtp-sink would not bind over it
        connect = _unix_connect(self.unix_path) if self.unix_path else _tcp_connect(self.port)
        return self._spawn(self.args, connect, "smtp-sink", [self.stdout_path])

    def output(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def counters(self):
        """smtp-sink's -c running counters, last values: {"sess": .., "quit": .., "mesg": ..}
        (sessions, QUITs, messages accepted; printed as each event happens)."""
        out = {}
        for k, v in re.findall(r"(\w+)=(\d+)", self.output()):
            out[k] = int(v)
        return out

    def count(self):
        """Messages accepted so far."""
        return self.counters().get("mesg", 0)

    def dumps(self):
        """The dump files (with -d), one per transaction in smtp-sink's format (LF lines):
        X-Client-Addr, X-Client-Proto, X-Helo-Args, X-Mail-Args, X-Rcpt-Args (one per RCPT),
        its own Received header, then the message, then an empty line."""
        out = []
        for p in sorted(glob.glob(os.path.join(self.dump_dir, "*"))):
            with open(p, "rb") as f:
                out.append(Delivered(p, f.read()))
        return out

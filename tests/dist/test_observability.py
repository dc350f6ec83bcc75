#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Grafana dashboard and the Prometheus alert rules in dist/ against a real server.

1. A real dotspool (2 workers, STARTTLS, spool watermark, delivery to a loopback SMTP sink that
   takes ok-*, defers later-* with 450 and refuses bad-* with 550, so delivered, deferred and
   failed outcomes, a bounce and a TLS handshake all happen) is scraped.
2. Every metric name the dashboard and the rules use appears in that scrape.
3. promtool check rules dist/dotspool-alerts.yml.
4. promtool test rules: input series are the scrape's own series (names and labels as scraped);
   each alert is driven by changing only series that exist in the scrape and must fire with its
   labels; with the scrape's values held, no alert fires.
5. A real Prometheus scrapes the server every second with the rules loaded: every dashboard query
   returns data, every rule evaluates without error.

Usage: test_observability.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

SRC = os.path.abspath(sys.argv[2]) if len(sys.argv) > 2 else None
sys.path.insert(0, os.path.join(SRC or ".", "tests", "integration"))
import dslib  # noqa: E402

Fail = dslib.Fail
SCRAPE_LABELS = 'instance="mx1:9530",job="dotspool"'


class Sink:
    """A minimal SMTP next hop on 127.0.0.1: 550 for bad-*, 450 for later-*, 250 otherwise."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.messages = 0
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        f = c.makefile("rb")
        c.settimeout(30)
        try:
            c.sendall(b"220 sink ESMTP\r\n")
            ok_rcpts = 0
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.strip().upper()
                if cmd.startswith(b"EHLO") or cmd.startswith(b"HELO"):
                    c.sendall(b"250 sink\r\n")
                elif cmd.startswith(b"MAIL"):
                    ok_rcpts = 0
                    c.sendall(b"250 2.1.0 ok\r\n")
                elif cmd.startswith(b"RCPT"):
                    if b"<BAD-" in cmd:
                        c.sendall(b"550 5.1.1 no such user here\r\n")
                    elif b"<LATER-" in cmd:
                        c.sendall(b"450 4.2.0 mailbox busy, try later\r\n")
                    else:
                        ok_rcpts += 1
                        c.sendall(b"250 2.1.5 ok\r\n")
                elif cmd == b"DATA":
                    if not ok_rcpts:
                        c.sendall(b"554 5.5.1 no valid recipients\r\n")
                        continue
                    c.sendall(b"354 go\r\n")
                    while True:
                        d = f.readline()
                        if not d or d == b".\r\n":
                            break
                    self.messages += 1
                    c.sendall(b"250 2.0.0 taken\r\n")
                elif cmd == b"QUIT":
                    c.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    c.sendall(b"250 2.0.0 ok\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.sock.close()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def samples(text):
    """[(name, labels-string, value)] of an exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            out.append((m[1], (m[2] or "{}")[1:-1], float(m[3])))
    return out


def value(smp, name, **labels):
    tot = 0.0
    for n, l, v in smp:
        if n == name and all(f'{k}="{w}"' in l for k, w in labels.items()):
            tot += v
    return tot


def metric_names(expr):
    return set(re.findall(r"\b(dotspool_[a-z0-9_]+)", expr))


def promql_exprs_dashboard(dash):
    exprs = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
    tpl = [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs, tpl


def load_rules(path):
    """Rules of the alert file: [(alert, expr, for, labels)] (PyYAML when present, else a small parser)."""
    try:
        import yaml
        doc = yaml.safe_load(open(path))
        return [(r["alert"], r["expr"], r.get("for", "0s"), r.get("labels", {}))
                for g in doc["groups"] for r in g["rules"] if "alert" in r]
    except ImportError:
        raise Fail("python3-yaml is needed to read the rules (Debian: python3-yaml)")


def main(t):
    src = SRC
    build = t.build
    dist = os.path.join(src, "dist")
    dash_path = os.path.join(dist, "dotspool-dashboard.json")
    rules_path = os.path.join(dist, "dotspool-alerts.yml")
    dash = json.load(open(dash_path))
    rules = load_rules(rules_path)
    promtool = shutil.which("promtool")
    prometheus = shutil.which("prometheus")
    t.check(promtool is not None and prometheus is not None, "promtool and prometheus installed (scripts/deps.sh)")

    # --- 1. a real server with as much on as possible ---------------------------------------------
    tmp = dslib.mkdtemp("ds-dist-obs-")
    tls = os.path.join(tmp, "tls")
    cp = subprocess.run(["sh", os.path.join(src, "scripts", "gen-test-cert.sh"), tls], capture_output=True,
                        timeout=60)
    t.check(cp.returncode == 0, "gen-test-cert.sh made a certificate", cp.stderr.decode()[-500:])
    sink = Sink()
    mport = dslib.free_port()
    srv = t.server(threads=2, extra=[
        "--metrics", f"127.0.0.1:{mport}",
        "--tls-cert", os.path.join(tls, "server.pem"), "--tls-key", os.path.join(tls, "server.key"),
        "--spool-max-bytes", "4G", "--spool-min-free-bytes", "1M",
        "--deliver-to", f"smtp://127.0.0.1:{sink.port}",
        "--retry-min-s", "3600", "--segment-size", "4M", "--spool-buffer-size", "1M"])
    srv.start()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def send(n, tag, rcpts):
        for i in range(n):
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=20) as s:
                s.starttls(context=ctx)
                s.sendmail("sender@localhost", rcpts, f"Subject: {tag} {i}\r\n\r\nbody {i}\r\n".encode())

    send(3, "ok", ["ok-1@localhost", "ok-2@localhost"])
    send(1, "bad", ["bad-1@localhost"])
    send(1, "later", ["later-1@localhost"])
    deadline = time.time() + 30
    while True:
        text = scrape(mport)
        smp = samples(text)
        got = {o: value(smp, "dotspool_deliveries_total", outcome=o) for o in ("delivered", "deferred", "failed")}
        if all(v >= 1 for v in got.values()) and value(smp, "dotspool_dsn_total") >= 1:
            break
        if time.time() > deadline:
            raise Fail(f"deliveries did not reach every outcome in 30 s: {got}\n{srv.log()}")
        time.sleep(0.3)
    t.check(value(smp, "dotspool_tls_handshakes_total", result="ok") >= 5, "scrape: TLS handshakes counted")
    t.check(value(smp, "dotspool_spool_watermark_samples_total") > 0, "scrape: the watermark sampler runs")
    t.check(value(smp, "dotspool_server_sync_gap_seconds_count") >= 5, "scrape: sync gap histogram observed")
    print(f"  scrape: {len(smp)} samples, outcomes {got}")
    scraped = {n for n, _, _ in smp}

    # --- 2. names ----------------------------------------------------------------------------------------
    exprs, tpl = promql_exprs_dashboard(dash)
    t.check(len(exprs) >= 20, f"dashboard: {len(exprs)} queries in {len(dash['panels'])} panels")
    used = set()
    for title, e in exprs + [("templating", q) for q in tpl]:
        for n in metric_names(e):
            used.add(n)
            t.check(n in scraped, f"dashboard '{title}': {n} is in the scrape")
    for alert, e, _, _ in rules:
        for n in metric_names(e):
            used.add(n)
            t.check(n in scraped, f"rule {alert}: {n} is in the scrape")
        for n in re.findall(r"\b([a-z_]+)\{", e):
            t.check(n.startswith("dotspool_") or n == "up", f"rule {alert}: {n} is a dotspool metric or up")
    # What the issue asks the dashboard to show.
    alltext = "\n".join(e for _, e in exprs)
    for want in ("rate(dotspool_server_messages_accepted_total",
                 "histogram_quantile(0.99, sum by (instance, le) (rate(dotspool_server_sync_gap_seconds_bucket",
                 "rate(dotspool_flushes_total", "dotspool_messages_per_flush_sum", "dotspool_queue_messages",
                 "dotspool_queue_oldest_message_age_seconds", "dotspool_deliveries_total",
                 "dotspool_delivery_latency_seconds_bucket", "dotspool_connections_refused_total",
                 "dotspool_tls_handshakes_total", "dotspool_spool_disk_bytes", "dotspool_spool_max_bytes"):
        t.check(want in alltext, f"dashboard shows {want}")
    names = {a for a, _, _, _ in rules}
    for want in ("DotspoolSpoolAboveWatermark", "DotspoolOldestMessageOld", "DotspoolSyncGapP99High",
                 "DotspoolDeliveryFailuresRising", "DotspoolFlushErrors"):
        t.check(want in names, f"alert rule {want}")

    # --- 3. promtool check rules -----------------------------------------------------------------------
    cp = subprocess.run([promtool, "check", "rules", rules_path], capture_output=True, text=True, timeout=60)
    t.check(cp.returncode == 0 and "SUCCESS" in cp.stdout, "promtool check rules", cp.stdout + cp.stderr)

    # --- 4. promtool test rules on series built from the scrape ------------------------------------------
    base = {}
    for n, l, v in smp:
        key = n + "{" + (l + "," if l else "") + SCRAPE_LABELS + "}"
        base[key] = (n, l, v)

    def series(over=None):
        """Input series: every scraped sample held at its value for 60 minutes, 'up' 1; over(n, l, v)
        may return another values string for a scraped series (only scraped series can change)."""
        out = [{"series": 'up{' + SCRAPE_LABELS + '}', "values": "1x60"}]
        for key, (n, l, v) in base.items():
            vals = over(n, l, v) if over else None
            out.append({"series": key, "values": vals or f"{v:.9g}x60"})
        return out

    inst = {"instance": "mx1:9530"}

    def counter_rising(step):
        return lambda v: f"{v:.9g}+{step}x60"

    buckets = sorted({float(re.search(r'le="([^"]+)"', l)[1]) for n, l, _ in smp
                      if n == "dotspool_server_sync_gap_seconds_bucket"})
    t.check(len(buckets) >= 5, f"sync gap histogram has {len(buckets)} buckets")
    max_bytes = value(smp, "dotspool_spool_max_bytes")

    def slow_gap(n, l, v):
        """100 final dots a minute, every one slower than 0.5 s: p99 far above the 100 ms SLO."""
        if n == "dotspool_server_sync_gap_seconds_bucket":
            le = float(re.search(r'le="([^"]+)"', l)[1])
            return f"{v:.9g}+{100 if le >= 0.5 else 0}x60"
        if n == "dotspool_server_sync_gap_seconds_count":
            return f"{v:.9g}+100x60"
        return None
    hop = next(re.search(r'hop="([^"]+)"', l)[1] for n, l, _ in smp if n == "dotspool_deliver_hop_up")
    scen = [
        ("DotspoolScrapeFailing", "10m", lambda n, l, v: None, {"severity": "critical", **inst, "job": "dotspool"},
         "up0"),
        ("DotspoolSpoolAboveWatermark", "5m",
         lambda n, l, v: "1x60" if n == "dotspool_spool_watermark_high" else None, {"severity": "critical", **inst}, None),
        ("DotspoolSpoolNearWatermark", "20m",
         lambda n, l, v: f"{0.95 * max_bytes:.9g}x60" if n == "dotspool_spool_disk_bytes" else None,
         {"severity": "warning", **inst}, None),
        ("DotspoolOldestMessageOld", "15m",
         lambda n, l, v: "4000+60x60" if n == "dotspool_queue_oldest_message_age_seconds" else None,
         {"severity": "warning", **inst}, None),
        ("DotspoolSyncGapP99High", "20m", slow_gap, {"severity": "warning", **inst}, None),
        ("DotspoolDeliveryFailuresRising", "40m",
         lambda n, l, v: f"{v:.9g}+10x60" if n == "dotspool_deliveries_total" else None,
         {"severity": "warning", **inst}, None),
        ("DotspoolDeliveryDeferralsHigh", "40m",
         lambda n, l, v: f"{v:.9g}+100x60" if n == "dotspool_deliveries_total" and 'outcome="deferred"' in l else None,
         {"severity": "warning", **inst}, None),
        ("DotspoolNextHopDown", "15m",
         lambda n, l, v: "0x60" if n == "dotspool_deliver_hop_up" else None,
         {"severity": "warning", **inst, "hop": hop}, None),
        ("DotspoolFlushErrors", "10m",
         lambda n, l, v: f"{v:.9g}+1x60" if n == "dotspool_flush_errors_total" and 'worker="0"' in l else None,
         {"severity": "critical", **inst}, None),
        ("DotspoolOutcomeRecordErrors", "10m",
         lambda n, l, v: f"{v:.9g}+1x60" if n == "dotspool_outcome_record_errors_total" else None,
         {"severity": "critical", **inst}, None),
    ]
    t.check({s[0] for s in scen} == names, f"a firing scenario for every rule: {sorted(names - {s[0] for s in scen})}")
    for s in scen:
        over = s[2]
        changed = [k for k, (n, l, v) in base.items() if over(n, l, v) is not None]
        t.check(s[4] == "up0" or changed, f"{s[0]}: its scenario changes {len(changed)} scraped series")

    # Annotations do not decide firing and their $value texts are not what is tested: a copy without them.
    stripped = os.path.join(tmp, "alerts-noannotations.yml")
    import yaml
    doc = yaml.safe_load(open(rules_path))
    for g in doc["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    yaml.safe_dump(doc, open(stripped, "w"))
    tests = []
    quiet = series()
    tests.append({"interval": "1m", "input_series": quiet,
                  "alert_rule_test": [{"eval_time": "40m", "alertname": a, "exp_alerts": []} for a in sorted(names)]})
    for alert, at, over, labels, special in scen:
        inp = series(over)
        if special == "up0":
            inp[0]["values"] = "0x60"
        tests.append({"interval": "1m", "input_series": inp,
                      "alert_rule_test": [{"eval_time": at, "alertname": alert,
                                           "exp_alerts": [{"exp_labels": {k: str(v) for k, v in labels.items()}}]}]})
    unit = os.path.join(tmp, "alerts-test.yml")
    yaml.safe_dump({"rule_files": [stripped], "evaluation_interval": "1m", "tests": tests}, open(unit, "w"))
    cp = subprocess.run([promtool, "test", "rules", unit], capture_output=True, text=True, timeout=120)
    t.check(cp.returncode == 0 and "SUCCESS" in cp.stdout,
            f"promtool test rules: {len(tests)} tests ({len(scen)} firing, 1 quiet) on {len(quiet)} scraped series",
            (cp.stdout + cp.stderr)[-4000:])
    # The unit test must be able to fail: a rule on a metric the scrape does not have never fires.
    broken = os.path.join(tmp, "alerts-broken.yml")
    open(broken, "w").write(open(stripped).read().replace("dotspool_flush_errors_total", "dotspool_flush_error_total"))
    unit2 = os.path.join(tmp, "alerts-test-broken.yml")
    yaml.safe_dump({"rule_files": [broken], "evaluation_interval": "1m", "tests": [tests[-2]]}, open(unit2, "w"))
    cp = subprocess.run([promtool, "test", "rules", unit2], capture_output=True, text=True, timeout=120)
    t.check(cp.returncode != 0, "promtool test rules fails for a renamed metric (the check can fail)")

    # --- 5. a real Prometheus scraping the server ----------------------------------------------------------
    pport = dslib.free_port()
    pdir = os.path.join(tmp, "prom")
    os.makedirs(pdir)
    conf = os.path.join(pdir, "prometheus.yml")
    open(conf, "w").write(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules_path}\n"
        "scrape_configs:\n  - job_name: dotspool\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{mport}']\n")
    plog = open(os.path.join(pdir, "log"), "wb")
    prom = subprocess.Popen([prometheus, f"--config.file={conf}", f"--storage.tsdb.path={pdir}/data",
                             f"--web.listen-address=127.0.0.1:{pport}"], stdout=plog, stderr=subprocess.STDOUT)
    try:
        def api(path, **q):
            url = f"http://127.0.0.1:{pport}/api/v1/{path}" + ("?" + urllib.parse.urlencode(q) if q else "")
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        deadline = time.time() + 30
        while True:
            try:
                n = api("query", query='count(dotspool_flushes_total{job="dotspool"})')["data"]["result"]
                if n:
                    break
            except OSError:
                pass
            if time.time() > deadline or prom.poll() is not None:
                raise Fail("prometheus did not scrape the server in 30 s:\n" + open(os.path.join(pdir, "log")).read()[-3000:])
            time.sleep(0.5)
        send(3, "more", ["ok-3@localhost"])
        time.sleep(6)  # a few scrapes after the load, for rate() over 5s
        for title, e in exprs + [("templating", f"count({q[len('label_values('):].split(',')[0]})") for q in tpl]:
            q = e.replace("$__rate_interval", "5s").replace("$instance", ".*")
            r = api("query", query=q)
            t.check(r["status"] == "success" and len(r["data"]["result"]) >= 1,
                    f"prometheus: '{title}' returns data: {q[:90]}", json.dumps(r)[:500])
        rr = api("rules")["data"]["groups"]
        got_rules = [r for g in rr for r in g["rules"]]
        t.check(len(got_rules) == len(rules) and all(r["health"] == "ok" for r in got_rules),
                f"prometheus: {len(got_rules)} rules loaded and evaluated without error",
                json.dumps([(r["name"], r["health"], r.get("lastError")) for r in got_rules]))
        firing = [r["name"] for r in got_rules if r.get("state") == "firing"]
        t.check(firing == [], f"prometheus: no alert fires on a healthy server ({firing})")
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        plog.close()
    srv.stop()
    sink.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], "--build", sys.argv[1]]
    dslib.run(main)

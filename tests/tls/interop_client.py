#!/usr/bin/env python3
"""Python ssl (OpenSSL) client against test_tls_interop's server.

Two connections: a full handshake verified against the test root CA for
'localhost', then a resumed one with the session (ticket) of the first.
Each sends a line and expects it echoed back as "250 <line>", then closes
with close_notify. Prints one line per connection: version cipher reused.
"""
import socket
import ssl
import sys

port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
sess = None
for i in range(2):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        s = ctx.wrap_socket(raw, server_hostname="localhost", session=sess)
        line = b"EHLO interop-%d\r\n" % i
        s.sendall(line)
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            got += chunk
        assert got == b"250 " + line, got
        big = bytes(range(32, 127)) * 1000 + b"\r\n"  # 95 KB in one line: many records
        s.sendall(big)
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        assert got == b"250 " + big, len(got)
        print(s.version(), s.cipher()[0], "reused" if s.session_reused else "full", flush=True)
        sess = s.session
        s.unwrap()

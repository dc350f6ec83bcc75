#!/bin/sh
# Generate throw-away TLS test certificates in DIR (created if missing):
#   ca.pem              root CA certificate (the trust anchor for clients)
#   server.pem          chain: leaf (ECDSA P-256) + intermediate CA
#   server.key          the leaf's private key
#   server-rsa.pem      chain: leaf (RSA-2048) + intermediate CA
#   server-rsa.key      its private key
# Leaves are for DNS:localhost and IP:127.0.0.1, ::1, valid 2 days.
# Keys are made at test time and live only in DIR: never commit them.
set -eu
if [ $# -ne 1 ]; then
	echo "usage: $0 DIR" >&2
	exit 2
fi
dir=$1
mkdir -p "$dir"
cd "$dir"
umask 077
tmp=$(mktemp -d gen.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

ossl() { openssl "$@" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }; }

cat >"$tmp/ca.ext" <<'EXT'
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
cat >"$tmp/leaf.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT

# Root CA (self-signed).
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
ossl req -x509 -new -key ca.key -sha256 -days 2 -subj "/O=dotspool test/CN=dotspool test root CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

# Intermediate CA, signed by the root.
ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/int.key"
ossl req -new -key "$tmp/int.key" -subj "/O=dotspool test/CN=dotspool test intermediate CA" -out "$tmp/int.csr"
ossl x509 -req -in "$tmp/int.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -CAserial "$tmp/ca.srl" \
	-sha256 -days 2 -extfile "$tmp/ca.ext" -out "$tmp/int.pem"

leaf() { # $1 = output basename, $2.. = genpkey args
	name=$1
	shift
	ossl genpkey "$@" -out "$name.key"
	ossl req -new -key "$name.key" -subj "/O=dotspool test/CN=localhost" -out "$tmp/$name.csr"
	ossl x509 -req -in "$tmp/$name.csr" -CA "$tmp/int.pem" -CAkey "$tmp/int.key" -CAcreateserial \
		-CAserial "$tmp/int.srl" -sha256 -days 2 -extfile "$tmp/leaf.ext" -out "$tmp/$name.leaf"
	cat "$tmp/$name.leaf" "$tmp/int.pem" >"$name.pem"
}
leaf server -algorithm EC -pkeyopt ec_paramgen_curve:P-256
leaf server-rsa -algorithm RSA -pkeyopt rsa_keygen_bits:2048

chmod 644 ca.pem server.pem server-rsa.pem
# Sanity: both chains verify against the root.
ossl verify -CAfile ca.pem -untrusted server.pem server.pem >/dev/null
ossl verify -CAfile ca.pem -untrusted server-rsa.pem server-rsa.pem >/dev/null

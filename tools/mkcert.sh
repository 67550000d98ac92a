#!/bin/sh
# mkcert.sh - throwaway CA and server certificate for tests (EC P-256, 30 days).
#
#   tools/mkcert.sh OUTDIR NAME [IP]
#
# Writes OUTDIR/ca.pem, ca.key, server.pem (leaf signed by the CA, then the
# CA: the chain a server presents) and server.key. The leaf's SAN is
# DNS:NAME and IP:IP (default 127.0.0.1). Overwrites earlier files. Prints
# nothing on success; on failure prints openssl's output and exits non-zero.
# Uses the openssl command line only; nothing here is for production.
set -eu

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
	echo "usage: $0 OUTDIR NAME [IP]" >&2
	exit 2
fi
out=$1
name=$2
ip=${3:-127.0.0.1}

command -v openssl >/dev/null 2>&1 || { echo "$0: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$out"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mkcert.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Run quietly; show the output only when the command fails.
run() {
	if ! "$@" >"$tmp/log" 2>&1; then
		cat "$tmp/log" >&2
		echo "$0: failed: $*" >&2
		exit 1
	fi
}

cat >"$tmp/ca.ext" <<EOT
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOT
cat >"$tmp/leaf.ext" <<EOT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$name, IP:$ip
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOT

umask 077
run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
run openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/server.key"
umask 022
run openssl req -new -key "$tmp/ca.key" -subj "/CN=dotproxy test CA" -out "$tmp/ca.csr"
run openssl x509 -req -in "$tmp/ca.csr" -signkey "$tmp/ca.key" -days 30 -sha256 \
	-set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/ca.ext" -out "$tmp/ca.pem"
run openssl req -new -key "$tmp/server.key" -subj "/CN=$name" -out "$tmp/server.csr"
run openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
	-days 30 -sha256 -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/leaf.ext" \
	-out "$tmp/leaf.pem"
run openssl verify -CAfile "$tmp/ca.pem" "$tmp/leaf.pem"

cat "$tmp/leaf.pem" "$tmp/ca.pem" >"$tmp/server.pem"
for f in ca.pem ca.key server.pem server.key; do
	cp "$tmp/$f" "$out/$f.new"
	mv -f "$out/$f.new" "$out/$f"
done
chmod 600 "$out/ca.key" "$out/server.key"

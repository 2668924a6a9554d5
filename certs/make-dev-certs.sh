#!/usr/bin/env bash
# Make a local development CA and a localhost certificate signed by it, for trying
# wsgate's wss:// listener. NOT for production: the CA key sits unencrypted on disk.
#
#   certs/make-dev-certs.sh            # create certs/dev/* if missing
#   certs/make-dev-certs.sh --force    # replace them
#
# Output (certs/dev/ is git-ignored):
#   ca.pem, ca.key                  the dev CA (trust ca.pem in your client/browser)
#   localhost.pem, localhost.key    server chain (leaf first, then the CA) and its key
set -euo pipefail

force=0
for arg in "$@"; do
    case "$arg" in
        --force | -f) force=1 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *)
            echo "usage: $0 [--force]" >&2
            exit 2
            ;;
    esac
done

command -v openssl >/dev/null || { echo "error: openssl not found" >&2; exit 1; }

# Run a command, showing its output only if it fails (openssl is chatty on stderr).
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "error: failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/dev"
# Paths as shown to the user: relative to the repo root (the parent of certs/).
rel="certs/dev"

ca_key="$out/ca.key"
ca_pem="$out/ca.pem"
leaf_key="$out/localhost.key"
leaf_pem="$out/localhost.pem"

days_ca=825   # dev CA validity
days_leaf=825 # Apple platforms reject TLS server certificates valid for more than 825 days

mkdir -p "$out"

if [[ $force -eq 0 && -e $ca_key && -e $ca_pem && -e $leaf_key && -e $leaf_pem ]]; then
    echo "certs: $rel/ already holds ca.pem, ca.key, localhost.pem, localhost.key (use --force to replace)"
else
    if [[ $force -eq 0 ]]; then
        for f in "$ca_key" "$ca_pem" "$leaf_key" "$leaf_pem"; do
            if [[ -e $f ]]; then
                echo "error: $f exists but the set is incomplete; rerun with --force to regenerate all" >&2
                exit 1
            fi
        done
    fi

    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    umask 077

    # The CA: ECDSA P-256, basicConstraints CA:TRUE, may only sign certificates.
    quiet openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days "$days_ca" -sha256 \
        -subj "/O=wsgate development/CN=wsgate dev CA $(hostname 2>/dev/null || echo local) $(date +%Y-%m-%d)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash"

    # The leaf: a PKCS#8 P-256 key, a CSR, then a certificate signed by the CA.
    quiet openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/localhost.key"
    quiet openssl req -new -key "$tmp/localhost.key" -out "$tmp/localhost.csr" \
        -subj "/O=wsgate development/CN=localhost"
    cat >"$tmp/leaf.ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EXT
    quiet openssl x509 -req -in "$tmp/localhost.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days "$days_leaf" -sha256 \
        -extfile "$tmp/leaf.ext" -out "$tmp/leaf.pem"

    # Serve the chain leaf first, then the CA.
    cat "$tmp/leaf.pem" "$tmp/ca.pem" >"$tmp/localhost.pem"
    quiet openssl verify -CAfile "$tmp/ca.pem" "$tmp/leaf.pem"

    chmod 600 "$tmp/ca.key" "$tmp/localhost.key"
    chmod 644 "$tmp/ca.pem" "$tmp/localhost.pem"
    mv -f "$tmp/ca.key" "$ca_key"
    mv -f "$tmp/ca.pem" "$ca_pem"
    mv -f "$tmp/localhost.key" "$leaf_key"
    mv -f "$tmp/localhost.pem" "$leaf_pem"
    echo "certs: wrote $rel/ca.pem, $rel/ca.key, $rel/localhost.pem, $rel/localhost.key"
    openssl x509 -in "$leaf_pem" -noout -subject -enddate -ext subjectAltName | sed 's/^/  /'
fi

cat <<MSG

Run wsgate with them (from the repository root):
  cargo run --release -- --listen 127.0.0.1:8443 --route /echo=tcp://127.0.0.1:7 \\
      --tls-cert $rel/localhost.pem --tls-key $rel/localhost.key
  (or --route /echo=builtin:echo for the built-in echo service)

Check the handshake:
  openssl s_client -connect 127.0.0.1:8443 -alpn http/1.1 -CAfile $rel/ca.pem </dev/null

Trust the dev CA ($rel/ca.pem) where your client runs, and remove it when done:
  Debian/Ubuntu: sudo cp $rel/ca.pem /usr/local/share/ca-certificates/wsgate-dev-ca.crt && sudo update-ca-certificates
  Fedora/RHEL:   sudo cp $rel/ca.pem /etc/pki/ca-trust/source/anchors/wsgate-dev-ca.pem && sudo update-ca-trust
  macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain $rel/ca.pem
  Windows:       certutil -addstore -f Root certs\\dev\\ca.pem   (elevated prompt)
  Firefox uses its own store: Settings > Privacy & Security > Certificates > Import.
  curl / Python: --cacert $rel/ca.pem, SSL_CERT_FILE=$rel/ca.pem, or ssl.create_default_context(cafile=...)
MSG

#!/usr/bin/env bash
# quicserve as a QUIC interop runner endpoint (server role).
#
# The runner's contract: ROLE (client|server) and TESTCASE come from the
# environment; files to serve are in /www, the certificate chain and key in
# /certs/cert.pem and /certs/priv.key; the server listens on UDP 443; TLS
# secrets go to SSLKEYLOGFILE and qlog files to QLOGDIR when those are set;
# a test case the endpoint does not support exits with status 127.
#
# The same script runs natively (interop/run.py, no Docker): WWW, CERTS,
# PORT and HOST override the defaults (CERTFILE / KEYFILE name the two files
# directly, e.g. certs/generate.py's key.pem), and QUICSERVE_PYTHON names the Python
# that has quicserve installed (default: the `quicserve` on PATH).
# RUN_ENDPOINT_DRY_RUN=1 prints the server command, one argument per line,
# instead of running it (used by the tests of the TESTCASE mapping).
set -euo pipefail

# The network simulator's endpoint base image ships /setup.sh (routes via the
# simulator, checksum offload off).  It is absent in native runs.
if [ -f /setup.sh ] && [ -z "${RUN_ENDPOINT_NATIVE:-}" ]; then
    bash /setup.sh
fi

ROLE="${ROLE:-server}"
TESTCASE="${TESTCASE:-}"
if [ "$ROLE" != "server" ]; then
    echo "quicserve is a server; role '$ROLE' is not supported" >&2
    exit 127
fi

WWW="${WWW:-/www}"
CERTS="${CERTS:-/certs}"
PORT="${PORT:-443}"
# The runner reaches the server over IPv4 and (ipv6 case) IPv6.  quicserve
# binds IPv6 sockets IPV6_V6ONLY, so "both" binds 0.0.0.0 and [::] side by side.
HOST="${HOST:-both}"

# hq-interop first: every runner case but http3 uses HTTP/0.9.  h3 is offered
# too (a client that offers only h3 still connects), except in the http3
# case, which must negotiate h3.
ALPN="hq-interop,h3"
EXTRA=()
case "$TESTCASE" in
    handshake|transfer|multiconnect|chacha20|keyupdate|v2|ipv6|longrtt|\
    amplificationlimit|handshakeloss|transferloss|handshakecorruption|\
    transfercorruption|blackhole|rebind-port|rebind-addr|multiplexing|\
    resumption|zerortt)
        ;;
    retry)
        EXTRA+=(--quic-retry)
        ;;
    http3)
        ALPN="h3"
        ;;
    *)
        # connectionmigration needs a server preferred address (aioquic has
        # none), ecn needs ECN marks (not implemented); anything new: 127.
        echo "test case '$TESTCASE' is not supported" >&2
        exit 127
        ;;
esac

case "$HOST" in
    both) BINDS=(--quic-bind "0.0.0.0:$PORT" --quic-bind "[::]:$PORT") ;;
    *:*) BINDS=(--quic-bind "[$HOST]:$PORT") ;;
    *) BINDS=(--quic-bind "$HOST:$PORT") ;;
esac

if [ -n "${QLOGDIR:-}" ]; then
    mkdir -p "$QLOGDIR"
    EXTRA+=(--quic-qlog-dir "$QLOGDIR")
fi

if [ -n "${QUICSERVE_PYTHON:-}" ]; then
    CMD=("$QUICSERVE_PYTHON" -m quicserve)
else
    CMD=(quicserve)
fi
CMD+=(--static "$WWW" "${BINDS[@]}"
      --certfile "${CERTFILE:-$CERTS/cert.pem}" --keyfile "${KEYFILE:-$CERTS/priv.key}"
      --quic-alpn "$ALPN" --log-level "${LOG_LEVEL:-info}" --no-access-log
      "${EXTRA[@]}")

if [ -n "${RUN_ENDPOINT_DRY_RUN:-}" ]; then
    printf '%s\n' "${CMD[@]}"
    exit 0
fi

echo "quicserve interop endpoint: TESTCASE=$TESTCASE ALPN=$ALPN on udp ${BINDS[*]} serving $WWW" >&2
exec "${CMD[@]}"

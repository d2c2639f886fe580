#!/bin/sh
# Certificates of the camera links, made with mvic-certs (the node image has it; so does `pip install mvic`):
#   deploy/k8s/make-certs.sh [OUT]          (default OUT: deploy/k8s/certs, what kustomization.yaml reads)
# writes OUT/ca (the CA and its key: keep it off the cluster), OUT/server (server.crt/.key with the names below,
# probe.crt/.key for the readiness probe, page-token for the live page) and OUT/C1..C7 (each camera's certificate,
# URI SAN spiffe://mvic.local/group/wildtrack/camera/C<k>). What exists is kept: run it again after adding a camera.
# The server names: the headless Service the cameras dial (every form a resolver may use), each pod's own name
# (mvic-server-N.mvic-server...) and localhost, which the readiness probe inside the pod dials.
set -eu
OUT=${1:-$(dirname "$0")/certs}
exec mvic-certs bundle --out "$OUT" \
    --dns mvic-server.mvic.svc.cluster.local --dns mvic-server.mvic.svc --dns mvic-server.mvic --dns mvic-server \
    --dns '*.mvic-server.mvic.svc.cluster.local' --dns localhost \
    --group wildtrack \
    --camera C1 --camera C2 --camera C3 --camera C4 --camera C5 --camera C6 --camera C7 \
    --token

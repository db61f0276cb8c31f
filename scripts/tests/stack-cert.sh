# Stack tests of `stackship cert` (sourced by scripts/tests/test-stack.sh, after
# scripts/tests/lib.sh), against Pebble, the ACME test server Let's Encrypt publishes (Debian's
# pebble package), in one test sharing one Pebble: a certificate issued for a test domain
# through prod's running edge, a challenge that cannot succeed, and a forced renewal under load.
# Prod serves its original certificate again afterwards, and Pebble stops, pass or fail.
# shellcheck shell=bash

STACK_TESTS+=(acme_certificates_issued_renewed_and_refused)

# The test domain: Pebble's own DNS (pebble-challtestsrv) resolves it to 127.0.0.1, where prod's
# edge answers on port 80; nothing else resolves there.
ACME_NAME="shop.stackship.test"
ACME_UNRESOLVED="nowhere.stackship.test"
# Pebble's ports on loopback: ACME, its management API (roots), the DNS server and its API.
PEBBLE_ACME_PORT=14000
PEBBLE_MANAGEMENT_PORT=15000
PEBBLE_DNS_PORT=18053
PEBBLE_DNS_API_PORT=18055
PEBBLE_DIR="${STACKSHIP_DATA}/test-pebble"

# pebble_stop: stops the Pebble processes pebble_start started (by their PIDs) and forgets
# its state; prod's deploy.env loses the ACME settings the tests gave it.
pebble_stop() {
    local name pid
    for name in pebble challtestsrv; do
        pid="$(cat "${PEBBLE_DIR}/${name}.pid" 2>/dev/null)" || continue
        kill "$pid" 2>/dev/null || true
    done
    rm -rf "$PEBBLE_DIR"
    sed -i '/^ACME_/d' "${PROD_DIR}/deploy.env"
    rm -f "${PROD_DIR}/secrets/acme-account-127.0.0.1_${PEBBLE_ACME_PORT}.json"
}

# wait_port PORT NAME: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    fail "$2 does not listen on 127.0.0.1:$1 after 10s: $(tail -n 5 "${PEBBLE_DIR}/$2.log" 2>/dev/null)"
}

# pebble_start: a fresh Pebble (a new CA, no accounts) validating HTTP-01 on port 80, its DNS
# resolving only ACME_NAME (to 127.0.0.1), and prod's deploy.env pointed at it. Nothing is
# reused from an earlier run: an account file made against another Pebble is removed.
pebble_start() {
    local port
    pebble_stop
    need pebble "apt-get install pebble"
    for port in "$PEBBLE_ACME_PORT" "$PEBBLE_MANAGEMENT_PORT" "$PEBBLE_DNS_PORT" "$PEBBLE_DNS_API_PORT"; do
        ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null \
            || fail "127.0.0.1:${port} is taken: Pebble's tests need it"
    done
    mkdir -p "$PEBBLE_DIR"
    # Pebble's own HTTPS: a root made here and a leaf for 127.0.0.1.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=stackship test Pebble TLS root" -keyout "${PEBBLE_DIR}/tls-root.key" \
        -out "${PEBBLE_DIR}/tls-root.pem" 2>/dev/null || fail "openssl: no Pebble TLS root"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "${PEBBLE_DIR}/tls.key" 2>/dev/null \
        | openssl x509 -req -CA "${PEBBLE_DIR}/tls-root.pem" -CAkey "${PEBBLE_DIR}/tls-root.key" \
            -days 2 -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n') \
            -out "${PEBBLE_DIR}/tls.crt" 2>/dev/null || fail "openssl: no Pebble TLS certificate"
    cat > "${PEBBLE_DIR}/pebble.json" <<EOF
{"pebble": {
  "listenAddress": "127.0.0.1:${PEBBLE_ACME_PORT}",
  "managementListenAddress": "127.0.0.1:${PEBBLE_MANAGEMENT_PORT}",
  "certificate": "${PEBBLE_DIR}/tls.crt",
  "privateKey": "${PEBBLE_DIR}/tls.key",
  "httpPort": 80,
  "tlsPort": 5001,
  "ocspResponderURL": "",
  "externalAccountBindingRequired": false
}}
EOF
    pebble-challtestsrv -management "127.0.0.1:${PEBBLE_DNS_API_PORT}" -dns01 "127.0.0.1:${PEBBLE_DNS_PORT}" \
        -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 "" -defaultIPv6 "" \
        > "${PEBBLE_DIR}/challtestsrv.log" 2>&1 &
    echo "$!" > "${PEBBLE_DIR}/challtestsrv.pid"
    # Every order is validated anew (no reused authorizations), at once (no random sleeps).
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
        pebble -config "${PEBBLE_DIR}/pebble.json" -dnsserver "127.0.0.1:${PEBBLE_DNS_PORT}" \
        > "${PEBBLE_DIR}/pebble.log" 2>&1 &
    echo "$!" > "${PEBBLE_DIR}/pebble.pid"
    wait_port "$PEBBLE_DNS_API_PORT" challtestsrv
    wait_port "$PEBBLE_ACME_PORT" pebble
    wait_port "$PEBBLE_MANAGEMENT_PORT" pebble
    curl -fsS -o /dev/null -d "{\"host\":\"${ACME_NAME}\",\"addresses\":[\"127.0.0.1\"]}" \
        "http://127.0.0.1:${PEBBLE_DNS_API_PORT}/add-a" || fail "pebble-challtestsrv did not add ${ACME_NAME}"
    printf '%s\n' "ACME_DOMAINS=${ACME_NAME}" "ACME_EMAIL=ops@stackship.test" \
        "ACME_DIRECTORY=https://127.0.0.1:${PEBBLE_ACME_PORT}/dir" \
        "ACME_CA_ROOT=${PEBBLE_DIR}/tls-root.pem" >> "${PROD_DIR}/deploy.env"
}

# pebble_roots FILE: the root (and intermediate) Pebble issues certificates under, into FILE.
pebble_roots() {
    local kind
    : > "$1"
    for kind in roots intermediates; do
        curl -fsS --cacert "${PEBBLE_DIR}/tls-root.pem" "https://127.0.0.1:${PEBBLE_MANAGEMENT_PORT}/${kind}/0" >> "$1" \
            || fail "no ${kind} from Pebble's management API"
    done
}

# cert_prod ARGS...: stackship cert ARGS... prod, from prod's installed release.
cert_prod() {
    env REGISTRY_USER="$STACKSHIP_REGISTRY_USER" REGISTRY_PASSWORD="$(registry_password)" \
        "${PROD_DIR}/current/stackship" cert "$@" prod
}

# served_chain_verifies CAFILE NAME: https://NAME on this machine's port 443 serves a chain that
# CAFILE's roots verify for NAME.
served_chain_verifies() {
    curl -fsS -o /dev/null --cacert "$1" --resolve "$2:443:127.0.0.1" "https://$2/api/service/version"
}

# served_sha NAME: the SHA-256 fingerprint of the certificate served on 443 for the name NAME.
served_sha() {
    openssl s_client -connect 127.0.0.1:443 -servername "$1" </dev/null 2>/dev/null \
        | openssl x509 -noout -fingerprint -sha256
}

# keep_original_pair: prod's certificate pair, kept once (for put_back_original_pair).
keep_original_pair() {
    local keep="${STACKSHIP_DATA}/test-original-tls"
    [[ -f "${keep}/tls.crt" ]] && return 0
    mkdir -p "$keep"
    cp -p "${PROD_DIR}/secrets/tls.crt" "${PROD_DIR}/secrets/tls.key" "$keep/"
}

# put_back_original_pair: prod serves the pair keep_original_pair kept; Pebble stops.
put_back_original_pair() {
    local keep="${STACKSHIP_DATA}/test-original-tls"
    pebble_stop
    [[ -f "${keep}/tls.crt" ]] || return 0
    cp -p "${keep}/tls.crt" "${keep}/tls.key" "${PROD_DIR}/secrets/"
    rm -f "${PROD_DIR}/secrets/tls.crt.previous" "${PROD_DIR}/secrets/tls.key.previous"
    deploy_prod >/dev/null 2>&1 || fail "putting the original certificate back failed"
    [[ "$(served_sha localhost)" == "$(openssl x509 -in "${keep}/tls.crt" -noout -fingerprint -sha256)" ]] \
        || fail "the original certificate is not served again"
    rm -rf "$keep"
}

acme_issue_through_the_edge() {
    local out roots
    out="$(mktemp)"
    roots="$(mktemp)"
    # Before: prod's own certificate, which Pebble's roots do not verify.
    pebble_roots "$roots"
    ! served_chain_verifies "$roots" "$ACME_NAME" 2>/dev/null || fail "Pebble's roots verify prod's certificate before any was issued"
    cert_prod issue > "$out" 2>&1 || fail "stackship cert issue prod failed: $(tail -n 15 "$out")"
    # The served chain is Pebble's, for the test domain; the HTTP redirect still works.
    served_chain_verifies "$roots" "$ACME_NAME" \
        || fail "https://${ACME_NAME} does not serve a chain Pebble's roots verify: $(served_sha "$ACME_NAME")"
    grep -q "^prod: certificate for ${ACME_NAME} until " "$out" \
        || fail "cert issue does not say which certificate it installed: $(tail -n 5 "$out")"
    # The account key: a 0600 file, and nowhere in what the command said.
    local account key
    account="${PROD_DIR}/secrets/acme-account-127.0.0.1_${PEBBLE_ACME_PORT}.json"
    [[ "$(stat -c %a "$account" 2>/dev/null)" == 600 ]] || fail "the ACME account file ${account} is missing or not 0600"
    key="$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["credentials"]; print(c["key_pkcs8"][20:60])' "$account")" \
        || fail "no key_pkcs8 in ${account}"
    [[ ${#key} -eq 40 ]] || fail "no account key canary"
    if grep -qF -- "$key" "$out"; then fail "the ACME account key appears in cert issue's output"; fi
    "${PROD_DIR}/current/stackship" cert show prod > "$out" 2>&1 || fail "stackship cert show prod failed"
    grep -q "$ACME_NAME" "$out" || fail "cert show does not name ${ACME_NAME}: $(cat "$out")"
    grep -qi "pebble" "$out" || fail "cert show does not name Pebble as the issuer: $(cat "$out")"
    "${PROD_DIR}/current/stackship" status prod > "$out" 2>&1 || fail "stackship status prod failed"
    grep -q "$ACME_NAME" "$out" || fail "status does not show the certificate's name: $(cat "$out")"
    # No helper, no responder config left behind.
    [[ -z "$(docker service ls -q --filter label=stackship.ops-helper)" ]] || fail "a helper service is left: $(docker service ls)"
    [[ -z "$(docker config ls -q --filter label=stackship.ops-helper=acme-http-01)" ]] || fail "a responder config is left: $(docker config ls)"
    # Not due: renew does nothing (Pebble's certificates last years).
    cert_prod renew > "$out" 2>&1 || fail "renew of a fresh certificate failed: $(tail -n 5 "$out")"
    grep -q "nothing to do" "$out" || fail "renew of a fresh certificate does not say it has nothing to do: $(cat "$out")"
    rm -f "$out" "$roots"
}

acme_failed_challenge_keeps_old_certificate() {
    local out before_sha before_files rc=0
    out="$(mktemp)"
    before_sha="$(served_sha "$ACME_NAME")"
    before_files="$(sha256sum "${PROD_DIR}/secrets/"tls.* | sort)"
    # A name whose DNS does not point here: Pebble cannot validate it.
    cert_prod issue --domains "${ACME_NAME},${ACME_UNRESOLVED}" > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "cert issue exited 0 for a name that does not resolve"
    ((rc == 2)) || fail "cert issue exited ${rc}, not 2 (nothing changed), for a failed challenge"
    # The name that failed, with the CA's own problem; not the one the edge answers for.
    grep -q "did not validate ${ACME_UNRESOLVED}: .*urn:ietf:params:acme:error:" "$out" \
        || fail "the failure does not name ${ACME_UNRESOLVED} with the ACME problem: $(tail -n 5 "$out")"
    if grep -q "did not validate.* ${ACME_NAME}:" "$out"; then fail "the challenge of ${ACME_NAME} failed too: $(tail -n 5 "$out")"; fi
    [[ "$(served_sha "$ACME_NAME")" == "$before_sha" ]] || fail "the served certificate changed after a failed challenge"
    [[ "$(sha256sum "${PROD_DIR}/secrets/"tls.* | sort)" == "$before_files" ]] \
        || fail "the certificate files changed after a failed challenge"
    [[ -z "$(docker service ls -q --filter label=stackship.ops-helper)" ]] || fail "a helper service is left: $(docker service ls)"
    [[ -z "$(docker config ls -q --filter label=stackship.ops-helper=acme-http-01)" ]] || fail "a responder config is left: $(docker config ls)"
    rm -f "$out"
}

acme_renewal_under_load_rolls_proxy_only() {
    local out roots before after line svc old_sha report rc=0
    out="$(mktemp)"
    roots="$(mktemp)"
    report="$(mktemp)"
    pebble_roots "$roots"
    old_sha="$(served_sha "$ACME_NAME")"
    before="$(all_running_tasks "$PROD_STACK")"
    # As the daily timer does, forced: a new certificate for the same name, under load that
    # trusts Pebble's roots; nginx-proxy rolls start-first behind the edge, so none may fail.
    LOAD_CACERT="$roots" LOAD_SERVER_NAME="$ACME_NAME" load_during "$report" cert_prod renew --force > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "stackship cert renew --force prod failed: $(tail -n 15 "$out")"
    [[ "$(served_sha "$ACME_NAME")" != "$old_sha" ]] || fail "the proxy still serves the old certificate"
    served_chain_verifies "$roots" "$ACME_NAME" || fail "the renewed chain is not Pebble's"
    after="$(all_running_tasks "$PROD_STACK")"
    while IFS= read -r line; do
        svc="${line%%:*}"
        if [[ "$svc" == "${PROD_STACK}_nginx-proxy" ]]; then
            [[ "$(grep "^${svc}:" <<<"$after")" != "$line" ]] || fail "the proxy did not roll"
        else
            [[ "$(grep "^${svc}:" <<<"$after")" == "$line" ]] || fail "${svc} restarted for a certificate change"
        fi
    done <<<"$before"
    (($(load_failed "$report") == 0)) || fail "requests failed while the proxy rolled onto the renewed certificate: $(load_summary "$report")"
    log "renewal under load: $(load_summary "$report")"
    rm -f "$out" "$roots" "$report" "${report}.log"
}

test_acme_certificates_issued_renewed_and_refused() {
    keep_original_pair
    # Whatever happens, prod gets its own certificate back and Pebble stops.
    trap 'put_back_original_pair >/dev/null 2>&1 || true' EXIT
    pebble_start
    log "issue for ${ACME_NAME} through prod's edge"
    acme_issue_through_the_edge
    log "a name whose DNS does not point here"
    acme_failed_challenge_keeps_old_certificate
    log "a forced renewal under load"
    acme_renewal_under_load_rolls_proxy_only
    trap - EXIT
    put_back_original_pair
}

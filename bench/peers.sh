#!/usr/bin/env bash
# peers.sh - side-by-side performance baseline of TLS-terminating scoring
# gateways on loopback (127.0.0.1 only).
#
# Contract under test (what the Rust gateway will do):
#   POST https://127.0.0.1:<port>/api/v1/service/<name>/score
#   "Authorization: Bearer <primary|secondary key>" else 401 JSON;
#   Authorization stripped; forwarded to http://127.0.0.1:18080/score
#   (closebackend: to http://127.0.0.1:18081/score, which closes every connection).
#
# What it does
#   1. starts the fixed backend (nginx, conf/backend-nginx.conf.in, :18080 keep-alive
#      and :18081 closing every connection)
#   2. for each cert type in $CERTS and each worker count in $WORKERS: starts
#      every peer in the table below, smoke-tests it, runs the tests with the
#      runs of different peers interleaved (noise drifts hit all peers alike)
#   3. prints median tables; everything (raw tool output too) goes to
#      results/<UTC stamp>/ (results.jsonl, table.md, env.txt, raw/)
#   4. stops exactly the processes it started, by PID, also on error / Ctrl-C
#
# Tests ($TESTS_ecdsa / $TESTS_rsa: which tests run with which certificate)
#   keepalive  wrk HTTPS keep-alive, POST ~200 B JSON, valid key; plus the
#              backend directly over plain HTTP as the reference row
#   closebackend  the keepalive load (wrk, keep-alive clients), but the peers,
#              restarted, forward to the backend's :18081, which answers every
#              response with "Connection: close" (as azmlinfsrv does): each
#              request opens a new backend connection; plus that backend
#              directly as the reference row
#   handshake  wrk with "Connection: close": new TCP+TLS connection per request.
#              NB wrk resumes its TLS session on reconnect (SSL_clear keeps it),
#              so these are TLS 1.3 *resumed* handshakes (PSK + ECDHE, no
#              certificate signature) - the key type hardly matters here
#   fullhs     full TLS handshakes, never resumed: `openssl s_time -new` x
#              $FULLHS_PROCS in parallel, handshake + close, no HTTP request.
#              The client needs ~3x the server's CPU, so hs/s is client-bound
#              on 2 cores: compare proxy CPU µs/hs, not hs/s
#   idle       $IDLE_CONNS idle TLS connections ("fresh": handshake only;
#              "keepalive": after one request each); proxy RSS growth, each
#              mode on freshly started peers
#   h2         h2load over HTTP/2 (ALPN h2) and, same client, over HTTP/1.1
#   testssl    testssl.sh --fast against each peer (~50 s each; not default)
#
# Noise: the machine is a shared 2-core VM. Before each run the script waits
# for a quiet machine (QUIET_*); a run in which more than MAX_OTHER % of the
# CPU went to anything but proxy, backend and load generator is marked noisy
# and repeated; runs of all peers are interleaved and the tables add each
# peer's paired ratio to the first peer (nginx) - compare a new peer by those.
#
# Usage
#   ./peers.sh                                   # default set (RUNS=3), ~15 minutes
#   RUNS=5 H2_RUNS=3 ./peers.sh                  # as in RESULTS.md, ~25 minutes
#   RUNS=1 DURATION=5 ./peers.sh                 # quick look (~5 minutes)
#   ONLY=nginx WORKERS=1 TESTS_ecdsa=keepalive TESTS_rsa= ./peers.sh
#   SYSCALLS=1 RUNS=1 WORKERS=1 TESTS_ecdsa="keepalive closebackend h2" TESTS_rsa= ./peers.sh
#       # + system calls per request of each proxy (perf's syscall tracepoints, counted in
#       # the kernel: far less overhead than strace, but some per call), in results.jsonl
#   EXTRA_PEER='rustgw 20443 exec /path/gateway --listen 127.0.0.1:20443 --cert $CHAIN --key $KEY --workers $W' ./peers.sh
#
# Needs: nginx haproxy wrk h2load curl openssl python3 ss (iproute2); testssl
# for the testssl test. Certificates: ./gen-certs.sh (run automatically).
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$BENCH/conf"
TOOLS="$BENCH/tools"
CERTDIR="$BENCH/certs"

# ---- knobs (environment) -----------------------------------------------------
WORKERS="${WORKERS:-1 2}"                 # worker processes / threads per proxy
CERTS="${CERTS:-ecdsa rsa}"               # certificate types (see gen-certs.sh)
TESTS_ecdsa="${TESTS_ecdsa-idle keepalive closebackend handshake fullhs h2}"
TESTS_rsa="${TESTS_rsa-handshake fullhs}" # the key type matters for handshakes only
RUNS="${RUNS:-3}"                         # repetitions of wrk runs (median taken)
H2_RUNS="${H2_RUNS:-1}"                   # repetitions of h2load runs
DURATION="${DURATION:-10}"                # seconds per wrk / h2load run
WARMUP="${WARMUP:-2}"                     # seconds of unrecorded wrk per peer first
WRK_THREADS="${WRK_THREADS:-1}"
WRK_CONNS="${WRK_CONNS:-64}"
H2_OPTS="${H2_OPTS:--t1 -c16 -m4}"        # h2load HTTP/2: 16 conns x 4 streams = 64 in flight
H1_OPTS="${H1_OPTS:--t1 -c64}"            # h2load HTTP/1.1: 64 conns, 1 in flight each
FULLHS_PROCS="${FULLHS_PROCS:-2}"         # parallel `openssl s_time -new` clients (fullhs)
IDLE_CONNS="${IDLE_CONNS:-5000}"
IDLE_MODES="${IDLE_MODES:-fresh keepalive}"
MAX_OTHER="${MAX_OTHER:-5}"               # a run with more foreign CPU (% of all cores) is noisy
SYSCALLS="${SYSCALLS:-0}"                 # 1: count the proxy's system calls per request (perf stat)
NOISE_RETRIES="${NOISE_RETRIES:-2}"       # ... and is repeated at most this many times
QUIET_MAX="${QUIET_MAX:-10}"              # before each run: wait until machine CPU busy <= this %
QUIET_WAIT="${QUIET_WAIT:-60}"            # ... but at most this many seconds (then run anyway)
ONLY="${ONLY:-}"                          # space-separated peer names to keep (default all)
EXTRA_PEER="${EXTRA_PEER:-}"              # "name port command" - a peer without editing
SCORE_PATH="/api/v1/service/iris/score"
BACKEND="127.0.0.1:18080"
BACKEND_CLOSE="127.0.0.1:18081"                           # the same backend, closing every connection
KEY1="bench-primary-0123456789abcdef0123456789abcdef"     # primary API key
KEY2="bench-secondary-fedcba9876543210fedcba9876543210"   # secondary API key
export BENCH_API_KEY="$KEY1"                                # read by tools/post.lua

# ---- the peers ---------------------------------------------------------------
# peer NAME PORT 'START COMMAND'
# The command is eval'ed in a subshell and must `exec` the server in the
# foreground, so that the PID tracked (CPU, RSS, stop) is the server itself;
# its child processes (nginx workers) are counted too. Available there:
#   $W workers/threads      $CHAIN leaf+CA pem   $KEY key   $HAPEM chain+key pem
#   $KEY1 $KEY2 API keys    $BACKEND host:port   $PRUN scratch dir of this peer
#   render FILE.in          prints conf/FILE.in with its @PLACEHOLDERS@ filled in
define_peers() {
    peer nginx   18443 'render nginx-proxy.conf.in > $PRUN/nginx.conf && exec nginx -e $PRUN/error.log -p $PRUN -c $PRUN/nginx.conf'
    peer haproxy 19443 'render haproxy.cfg.in > $PRUN/haproxy.cfg && exec haproxy -db -f $PRUN/haproxy.cfg'
    # scoregate is added by ./compare.sh as EXTRA_PEER (run-scoregate.sh renders its config)
}

# ---- helpers -----------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES="${RES:-$BENCH/results/$STAMP}"         # results of this run
RUN="$(mktemp -d /tmp/peers-run.XXXXXX)"     # scratch: rendered configs, pids, logs
mkdir -p "$RES/raw"
JSONL="$RES/results.jsonl"
: > "$JSONL"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$RES/run.log" >&2; }
die() { log "ERROR: $*"; exit 1; }

PEER_NAMES=(); PEER_PORTS=(); PEER_CMDS=()
peer() {
    if [[ -n "$ONLY" && " $ONLY " != *" $1 "* ]]; then return 0; fi
    PEER_NAMES+=("$1"); PEER_PORTS+=("$2"); PEER_CMDS+=("$3")
}

# render FILE.in: fill the @PLACEHOLDERS@ of a config template (stdout)
render() {
    local out
    out="$(sed -e "s|@RUN@|$PRUN|g" -e "s|@WORKERS@|$W|g" -e "s|@CHAIN@|$CHAIN|g" \
               -e "s|@KEY@|$KEY|g" -e "s|@HAPEM@|$HAPEM|g" -e "s|@KEY1@|$KEY1|g" \
               -e "s|@KEY2@|$KEY2|g" -e "s|@BACKEND@|$BACKEND|g" "$CONF/$1")"
    if grep -q '@[A-Z0-9]*@' <<<"$out"; then echo "render: unfilled placeholder in $1" >&2; return 1; fi
    printf '%s\n' "$out"
}

port_busy() { ss -Hltn "sport = :$1" | grep -q .; }

proc_state() { local s; s="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1; s="${s##*) }"; echo "${s%% *}"; }
alive() { local st; st="$(proc_state "$1")" || return 1; [[ "$st" != Z ]]; }

# tree_pids PID: the PID and its live children (nginx master + workers)
tree_pids() { echo "$1"; pgrep -P "$1" || true; }
csv() { tr '\n' ',' | sed 's/,$//'; }

# cpu_ticks PID...: "utime+stime stime" (clock ticks) summed over the PIDs; stime is the time
# in the kernel (system calls, and the loopback TCP work the kernel does in the process's context)
cpu_ticks() {
    local t=0 k=0 p s f
    for p in "$@"; do
        s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        read -r -a f <<<"${s##*) }"          # fields after "(comm) ": f[0] = state (field 3)
        t=$(( t + f[11] + f[12] ))           # fields 14 utime, 15 stime
        k=$(( k + f[12] ))
    done
    echo "$t $k"
}
# machine_ticks: "busy total" from /proc/stat (all CPUs)
machine_ticks() {
    local _cpu u n s i w q sq st
    read -r _cpu u n s i w q sq st _ < /proc/stat
    echo "$(( u + n + s + q + sq + st )) $(( u + n + s + i + w + q + sq + st ))"
}
HZ="$(getconf CLK_TCK)"

# wait_quiet: the machine is shared (other sessions' builds and tests may run
# on it). Before a measurement, sample machine CPU for 1 s (our peers are idle
# then) until it is <= QUIET_MAX %, at most QUIET_WAIT s. Sets PRE_BUSY (%).
wait_quiet() {
    local -a m0 m1
    local start=$SECONDS
    while :; do
        m0=($(machine_ticks)); sleep 1; m1=($(machine_ticks))
        PRE_BUSY=$(( (m1[0] - m0[0]) * 100 / (m1[1] - m0[1] > 0 ? m1[1] - m0[1] : 1) ))
        (( PRE_BUSY <= QUIET_MAX )) && break
        (( SECONDS - start >= QUIET_WAIT )) && { log "  machine still ${PRE_BUSY}% busy (other load) - running anyway"; break; }
    done
    (( SECONDS - start > 2 )) && log "  waited $((SECONDS - start)) s for a quiet machine (now ${PRE_BUSY}% busy)"
    return 0
}

STARTED=()        # processes we started, "pid:starttime", stopped in reverse order
CHILDREN=()       # their children seen at start (nginx workers), "parent:pid:starttime"
starttime() { local s f; s="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1; read -r -a f <<<"${s##*) }"; echo "${f[19]}"; }

# start_proc NAME PORT LOGFILE CMD : start, wait until PORT listens; sets LAST_PID
start_proc() {
    local name="$1" port="$2" logf="$3" cmd="$4" pid i c
    port_busy "$port" && die "port $port is in use by a process we did not start - not starting $name"
    # scoregate copy: the peer variables are exported, so that a command that `exec`s a
    # script (EXTRA_PEER='scoregate 20443 exec .../run-scoregate.sh') sees them too
    ( export PRUN W CHAIN KEY HAPEM KEY1 KEY2 BACKEND; eval "$cmd" ) >"$logf" 2>&1 &
    pid=$!
    STARTED+=("$pid:$(starttime "$pid" || echo 0)")
    for i in $(seq 100); do
        alive "$pid" || { cat "$logf" >&2; die "$name exited at start (log: $logf)"; }
        port_busy "$port" && break
        sleep 0.1
    done
    port_busy "$port" || die "$name did not listen on $port within 10 s (log: $logf)"
    sleep 0.5                                 # let the workers come up
    for c in $(pgrep -P "$pid" || true); do CHILDREN+=("$pid:$c:$(starttime "$c")"); done
    LAST_PID="$pid"
    log "started $name pid $pid ($(tree_pids "$pid" | csv)) on 127.0.0.1:$port"
}

# stop_pid PID STARTTIME: TERM, wait up to 10 s, then KILL - only if PID is
# still the process we started (same start time), so a reused PID is never hit
stop_pid() {
    local pid="$1" st="$2" i
    [[ "$(starttime "$pid" 2>/dev/null)" == "$st" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
# stop_started FROM: stop STARTED[FROM..] (newest first) and any of their
# recorded children left behind (only if the parent had to be killed)
stop_started() {
    local from="$1" i e pid
    for (( i=${#STARTED[@]}-1; i>=from; i-- )); do
        pid="${STARTED[i]%%:*}"
        stop_pid "$pid" "${STARTED[i]##*:}"
        for e in "${CHILDREN[@]}"; do
            [[ "${e%%:*}" == "$pid" ]] || continue
            e="${e#*:}"; stop_pid "${e%%:*}" "${e##*:}"
        done
    done
    STARTED=("${STARTED[@]:0:from}")
}
cleanup() { stop_started 0; rm -rf "$RUN"; }
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# record K=V...: append one JSON object to results.jsonl (numbers unquoted)
record() {
    local kv k v sep="" line="{"
    for kv in "$@"; do
        k="${kv%%=*}"; v="${kv#*=}"
        if [[ "$v" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then line+="$sep\"$k\":$v"
        else line+="$sep\"$k\":\"${v//\"/\\\"}\""; fi
        sep=","
    done
    echo "$line}" >> "$JSONL"
}

# ---- tests -------------------------------------------------------------------
# smoke NAME PORT: functional checks of the gateway contract with curl
smoke() {
    local name="$1" port="$2" ok=0 bad=0 host="scoring.example.test"
    local url="https://$host:$port$SCORE_PATH" hdrs="$RUN/smoke-$name.hdr" body="$RUN/smoke-$name.body"
    # HTTP/1.1 like the wrk load; one HTTP/2 check at the end. (With HTTP/2,
    # haproxy's early 401 while curl still uploads the body sometimes makes
    # curl 7.88 exit 92 "stream not closed cleanly" - see RESULTS.md.)
    local c=(curl -s --http1.1 --max-time 5 --resolve "$host:$port:127.0.0.1" --cacert "$CERTDIR/ca.pem"
             -o "$body" -D "$hdrs" -w '%{http_code}' -H 'Content-Type: application/json')
    check() {   # check DESCRIPTION EXPECTED_CODE CURL_ARGS...
        local desc="$1" want="$2" got; shift 2
        got="$("${c[@]}" "$@" || true)"
        if [[ "$got" == "$want" ]]; then ok=$((ok+1)); else bad=$((bad+1)); log "  SMOKE FAIL $name: $desc: want $want got $got"; fi
    }
    check "primary key"       200 --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer $KEY1" "$url"
    if ! grep -q '"result"' "$body" || grep -qi '^x-auth-seen' "$hdrs"; then
        bad=$((bad+1)); log "  SMOKE FAIL $name: backend body missing or Authorization not stripped"; fi
    check "secondary key"     200 --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer $KEY2" "$url"
    check "other service"     200 --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer $KEY1" "https://$host:$port/api/v1/service/other-model-2/score"
    check "wrong key"         401 --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer nope" "$url"
    check "no Authorization"  401 --data-binary @"$TOOLS/body.json" "$url"
    check "key without Bearer" 401 --data-binary @"$TOOLS/body.json" -H "Authorization: $KEY1" "$url"
    check "unknown path"      404 --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer $KEY1" "https://$host:$port/api/v1/service/iris/predict"
    check "HTTP/2 primary"    200 --http2 --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer $KEY1" "$url"
    local tls
    tls="$(timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$host" -CAfile "$CERTDIR/ca.pem" </dev/null 2>/dev/null \
           | awk '/^New, /{sub(",", "", $2); p=$2" "$5} /^Peer signature type/{g=$4} /^Server public key is/{k=$5}
                  /Verify return code/{v=$4} END{print p", "g" "k"-bit key, verify="v}')"
    log "  smoke $name: $ok ok, $bad failed; TLS: $tls"
    record target="$name" cert="$CERT" workers="$W" test=smoke ok="$ok" failed="$bad" tls="$tls"
}

# measure PID OUTFILE CMD...: run a load generator (CMD, output to OUTFILE)
# and account CPU over it: sets M_WALL_S, M_PROXY_US, M_BACKEND_US, M_LOADGEN_US (CPU
# microseconds of the proxy PID + children, the backend, the load generator),
# M_BUSY_PCT (machine CPU busy, % of all cores) and M_OTHER_PCT (the part of it
# that none of the three used: kernel threads, another session's work).
measure() {
    local pids bpids out="$2" p0 b0 p1 b1 s0 s1 lu ls
    local -a m0 m1
    pids="$(tree_pids "$1" | tr '\n' ' ')"; shift 2
    bpids="$(tree_pids "$BACKEND_PID" | tr '\n' ' ')"
    [[ "$pids" == "$bpids" ]] && bpids=""     # direct backend run: counted once, as "proxy"
    local w0="$EPOCHREALTIME" perf_pid=""
    if [[ "$SYSCALLS" == 1 ]]; then
        # every thread of the proxy's processes, counted from (about) before the load starts
        # until it has ended, so the per-request figure includes the client's connects and
        # closes; 0.3 s is given to perf to attach
        # shellcheck disable=SC2086
        perf stat -x, -e "$SYSCALL_EVENTS" -p "$(echo $pids | tr ' ' ',')" -o "$out.syscalls" &
        perf_pid=$!
        sleep 0.3
    fi
    read -r p0 s0 <<<"$(cpu_ticks $pids)"; read -r b0 _ <<<"$(cpu_ticks $bpids)"; m0=($(machine_ticks))
    { TIMEFORMAT='%U %S'; time timeout $((DURATION + 30)) "$@" >"$out" 2>&1; } 2>"$out.time" \
        || log "  $1 exit status $? ($out)"
    read -r p1 s1 <<<"$(cpu_ticks $pids)"; read -r b1 _ <<<"$(cpu_ticks $bpids)"; m1=($(machine_ticks))
    if [[ -n "$perf_pid" ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" || true
        [[ -s "$out.syscalls" ]] || log "  SYSCALLS=1: perf counted nothing for $out"
    fi
    M_WALL_S="$(awk -v a="$w0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}')"
    read -r lu ls < "$out.time" || true
    M_PROXY_US=$(( (p1 - p0) * 1000000 / HZ ))
    M_PROXY_SYS_US=$(( (s1 - s0) * 1000000 / HZ ))
    M_BACKEND_US=$(( (b1 - b0) * 1000000 / HZ ))
    M_LOADGEN_US="$(awk -v u="${lu:-0}" -v s="${ls:-0}" 'BEGIN{printf "%d", (u+s)*1e6}')"
    local busy_us=$(( (m1[0] - m0[0]) * 1000000 / HZ )) total_us=$(( (m1[1] - m0[1]) * 1000000 / HZ ))
    (( total_us > 0 )) || total_us=1
    M_BUSY_PCT="$(awk -v b="$busy_us" -v t="$total_us" 'BEGIN{printf "%.1f", b*100/t}')"
    M_OTHER_PCT="$(awk -v b="$busy_us" -v t="$total_us" -v p="$M_PROXY_US" -v k="$M_BACKEND_US" -v l="$M_LOADGEN_US" \
        'BEGIN{printf "%.1f", (b-p-k-l)*100/t}')"
}
per_req() { awk -v us="$1" -v n="$2" 'BEGIN{if(n<1)n=1; printf "%.1f", us/n}'; }
# the system calls SYSCALLS=1 counts one by one (all of them are counted in total)
SYSCALL_NAMES="read write readv writev recvfrom sendto recvmsg sendmsg sendfile64 epoll_wait
  epoll_pwait epoll_ctl accept4 connect socket close shutdown setsockopt getsockopt getsockname
  getpeername ioctl fcntl futex sched_yield madvise mmap munmap brk"
SYSCALL_EVENTS="raw_syscalls:sys_enter$(printf ',syscalls:sys_enter_%s' $SYSCALL_NAMES)"
# syscall_fields OUT REQUESTS: record fields for the system calls of the run whose tool
# output is OUT (nothing unless SYSCALLS=1): syscalls_per_req, and sys_<name>_per_req for
# each counted call made at least 0.01 times per request
syscall_fields() {
    [[ "$SYSCALLS" == 1 && -s "$1.syscalls" ]] || return 0
    awk -F, -v n="$2" '
        $3 == "raw_syscalls:sys_enter" { printf "syscalls_per_req=%.2f\n", $1 / (n < 1 ? 1 : n) }
        $3 ~ /^syscalls:sys_enter_/ && $1 + 0 > 0 {
            name = $3; sub(/^syscalls:sys_enter_/, "", name); v = $1 / (n < 1 ? 1 : n)
            if (v >= 0.01) printf "sys_%s_per_req=%.2f\n", name, v
        }' "$1.syscalls"
}
# noisy: true if the last measurement had more than MAX_OTHER % foreign CPU
noisy() { awk -v o="$M_OTHER_PCT" -v m="$MAX_OTHER" 'BEGIN{exit !(o > m)}'; }

# run_wrk TARGET TEST RUN URL PID [wrk args...]: one wrk run, recorded; a run
# disturbed by other load (> MAX_OTHER % foreign CPU) is recorded as noisy=1
# and repeated, at most NOISE_RETRIES times
run_wrk() {
    local target="$1" test="$2" run="$3" url="$4" pid="$5"; shift 5
    local attempt out r requests flag sysf
    for (( attempt = 0; attempt <= NOISE_RETRIES; attempt++ )); do
        out="$RES/raw/$target-$CERT-w$W-$test-$run.$attempt.txt"
        wait_quiet
        measure "$pid" "$out" wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency \
            -s "$TOOLS/post.lua" "$@" "$url"
        r="$(grep '^WRKRESULT' "$out" | sed 's/^WRKRESULT //')" || { log "  no WRKRESULT in $out"; return 0; }
        requests="$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$r")"
        flag=0; noisy && flag=1
        sysf="$(syscall_fields "$out" "$requests")"
        record target="$target" cert="$CERT" workers="$W" test="$test" run="$run" attempt="$attempt" noisy="$flag" \
            $(tr ' ' '\n' <<<"$r") \
            proxy_cpu_us_per_req="$(per_req "$M_PROXY_US" "$requests")" \
            proxy_sys_us_per_req="$(per_req "$M_PROXY_SYS_US" "$requests")" \
            backend_cpu_us_per_req="$(per_req "$M_BACKEND_US" "$requests")" \
            loadgen_cpu_us_per_req="$(per_req "$M_LOADGEN_US" "$requests")" \
            machine_busy_pct="$M_BUSY_PCT" other_cpu_pct="$M_OTHER_PCT" pre_busy_pct="$PRE_BUSY" $sysf
        log "  $test $target $CERT w$W run $run: $(grep -oE 'rps=[0-9.]+ p50_us=[0-9]+ p90_us=[0-9]+ p99_us=[0-9]+' <<<"$r")" \
            "proxy_us/req=$(per_req "$M_PROXY_US" "$requests") (kernel $(per_req "$M_PROXY_SYS_US" "$requests")) other_cpu=${M_OTHER_PCT}%" \
            "$(sed -n 's/^syscalls_per_req=/syscalls\/req=/p' <<<"$sysf")" \
            "$(grep -oE 'err_[a-z]+=[1-9][0-9]*' <<<"$r" | tr '\n' ' ')$( ((flag)) && echo '- NOISY, repeating')"
        (( flag )) || break
    done
}

# run_h2load TARGET PROTO RUN PORT PID: one h2load run (PROTO h2 or h1),
# recorded, repeated like run_wrk when noisy
run_h2load() {
    local target="$1" proto="$2" run="$3" port="$4" pid="$5" opts attempt out flag
    if [[ "$proto" == h2 ]]; then opts="$H2_OPTS"; else opts="$H1_OPTS --h1"; fi
    for (( attempt = 0; attempt <= NOISE_RETRIES; attempt++ )); do
        out="$RES/raw/$target-$CERT-w$W-h2load-$proto-$run.$attempt.txt"
        wait_quiet
        # shellcheck disable=SC2086
        measure "$pid" "$out" h2load $opts -D "$DURATION" -d "$TOOLS/body.json" \
            -H 'content-type: application/json' -H "authorization: Bearer $KEY1" \
            "https://127.0.0.1:$port$SCORE_PATH"
        local rps ok failed non2xx mean max proto_seen
        rps="$(sed -nE 's/^finished in .*, ([0-9.]+) req\/s.*/\1/p' "$out")"
        ok="$(sed -nE 's/^requests: .* ([0-9]+) succeeded.*/\1/p' "$out")"
        failed="$(sed -nE 's/^requests: .* ([0-9]+) failed, ([0-9]+) errored, ([0-9]+) timeout.*/\1+\2+\3/p' "$out")"
        non2xx="$(sed -nE 's/^status codes: [0-9]+ 2xx, ([0-9]+) 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx.*/\1+\2+\3/p' "$out")"
        # "time for request:  min  max  mean  sd  +/-sd"
        mean="$(awk '/^time for request:/{print $6}' "$out")"
        max="$(awk '/^time for request:/{print $5}' "$out")"
        proto_seen="$(sed -nE 's/^Application protocol: (.*)/\1/p' "$out")"
        [[ -n "$rps" ]] || { log "  h2load $target $proto: no result (see $out)"; return 0; }
        flag=0; noisy && flag=1
        local n="${ok:-0}" sysf
        sysf="$(syscall_fields "$out" "$n")"
        record target="$target" cert="$CERT" workers="$W" test="h2load" proto="${proto_seen:-$proto}" \
            run="$run" attempt="$attempt" noisy="$flag" rps="$rps" \
            succeeded="${ok:-0}" errors="$(( ${failed:-0} + ${non2xx:-0} ))" mean_latency="$mean" max_latency="$max" \
            proxy_cpu_us_per_req="$(per_req "$M_PROXY_US" "$n")" \
            proxy_sys_us_per_req="$(per_req "$M_PROXY_SYS_US" "$n")" \
            loadgen_cpu_us_per_req="$(per_req "$M_LOADGEN_US" "$n")" \
            machine_busy_pct="$M_BUSY_PCT" other_cpu_pct="$M_OTHER_PCT" $sysf
        log "  h2load $target ${proto_seen:-$proto} w$W run $run: $rps req/s, mean $mean, other_cpu=${M_OTHER_PCT}%" \
            "$(sed -n 's/^syscalls_per_req=/syscalls\/req=/p' <<<"$sysf")$( ((flag)) && echo ' - NOISY, repeating')"
        (( flag )) || break
    done
}

# run_fullhs TARGET RUN PORT PID: full TLS handshakes, no resumption possible
# (`openssl s_time -new`: connect, full handshake, close; no HTTP request),
# FULLHS_PROCS client processes in parallel; proxy CPU per handshake. (wrk
# cannot do this: on reconnect it resumes its TLS session - see "handshake".)
run_fullhs() {
    local target="$1" run="$2" port="$3" pid="$4" attempt out flag n rate
    for (( attempt = 0; attempt <= NOISE_RETRIES; attempt++ )); do
        out="$RES/raw/$target-$CERT-w$W-fullhs-$run.$attempt.txt"
        wait_quiet
        measure "$pid" "$out" bash -c 'for i in $(seq "$1"); do
                openssl s_time -connect "127.0.0.1:$2" -new -time "$3" 2>&1 | grep -a "real seconds" &
            done; wait' _ "$FULLHS_PROCS" "$port" "$DURATION"
        n="$(awk '/connections in .* real seconds/{s+=$1} END{print s+0}' "$out")"
        (( n > 0 )) || { log "  fullhs $target: no result (see $out)"; return 0; }
        rate="$(awk -v n="$n" -v t="$M_WALL_S" 'BEGIN{printf "%.1f", n/t}')"
        flag=0; noisy && flag=1
        record target="$target" cert="$CERT" workers="$W" test=fullhs run="$run" attempt="$attempt" noisy="$flag" \
            requests="$n" rps="$rate" clients="$FULLHS_PROCS" \
            proxy_cpu_us_per_req="$(per_req "$M_PROXY_US" "$n")" \
            proxy_sys_us_per_req="$(per_req "$M_PROXY_SYS_US" "$n")" \
            backend_cpu_us_per_req="$(per_req "$M_BACKEND_US" "$n")" \
            loadgen_cpu_us_per_req="$(per_req "$M_LOADGEN_US" "$n")" \
            machine_busy_pct="$M_BUSY_PCT" other_cpu_pct="$M_OTHER_PCT" pre_busy_pct="$PRE_BUSY" \
            $(syscall_fields "$out" "$n")
        log "  fullhs $target $CERT w$W run $run: $rate handshakes/s, proxy_us/hs=$(per_req "$M_PROXY_US" "$n")" \
            "other_cpu=${M_OTHER_PCT}%$( ((flag)) && echo ' - NOISY, repeating')"
        (( flag )) || break
    done
}

# run_idle TARGET PORT PID MODE: idle-connection memory (RSS of PID + children)
run_idle() {
    local target="$1" port="$2" pids mode="$4" out flag=""
    pids="$(tree_pids "$3" | csv)"
    out="$RES/raw/$target-$CERT-w$W-idle-$mode.txt"
    [[ "$mode" == keepalive ]] && flag="--request"
    timeout 300 python3 "$TOOLS/idle_conns.py" --port "$port" --pids "$pids" --n "$IDLE_CONNS" \
        $flag --hold 3 --timeout 240 --cafile "$CERTDIR/ca.pem" >"$out" 2>&1 || log "  idle_conns exit $? ($out)"
    local j; j="$(sed -n 's/^IDLERESULT //p' "$out")"
    [[ -n "$j" ]] || { log "  idle $target $mode: no result (see $out)"; return 0; }
    # merge the tool's JSON with our labels
    echo "{\"target\":\"$target\",\"cert\":\"$CERT\",\"workers\":$W,\"test\":\"idle\",\"mode\":\"$mode\",${j#\{}" >> "$JSONL"
    log "  idle $target $mode w$W: $j"
}

# run_testssl TARGET PORT: one bounded testssl.sh --fast run
run_testssl() {
    local target="$1" port="$2" out t0 t1
    out="$RES/raw/$target-$CERT-testssl.txt"
    command -v testssl >/dev/null || { log "  testssl not installed"; return 0; }
    t0="$(date +%s)"
    timeout 900 testssl --fast --quiet --color 0 --warnings off --nodns none --add-ca "$CERTDIR/ca.pem" \
        --ip 127.0.0.1 "scoring.example.test:$port" >"$out" 2>&1 || true
    t1="$(date +%s)"
    record target="$target" cert="$CERT" workers="$W" test=testssl seconds="$((t1 - t0))" file="$out"
    log "  testssl $target: $((t1 - t0)) s, output in $out"
}

# ---- main ----------------------------------------------------------------------
for tool in nginx haproxy wrk h2load curl openssl python3 ss pgrep; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (see RESULTS.md, setup)"
done
if [[ "$SYSCALLS" == 1 ]]; then
    perf stat -e "$SYSCALL_EVENTS" -- true >/dev/null 2>&1 \
        || die "SYSCALLS=1 needs perf with the syscall tracepoints $SYSCALL_EVENTS (apt-get install linux-perf; run as root)"
fi
[[ -f "$CERTDIR/ca.pem" ]] || "$BENCH/gen-certs.sh" >/dev/null

define_peers
if [[ -n "$EXTRA_PEER" ]]; then
    read -r _n _p _c <<<"$EXTRA_PEER"
    peer "$_n" "$_p" "$_c"
fi
(( ${#PEER_NAMES[@]} > 0 )) || log "no peers selected (ONLY=$ONLY): backend only"

{
    echo "date_utc: $(date -u '+%Y-%m-%d %H:%M:%S')"
    echo "host: $(uname -srm), $(nproc) CPUs, $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"
    echo "cpu: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
    echo "nginx: $(nginx -v 2>&1)"
    echo "haproxy: $(haproxy -v 2>&1 | head -1)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "h2load: $(h2load --version 2>&1 | head -1)"
    echo "openssl: $(openssl version)"
    echo "python3: $(python3 --version 2>&1)"
    echo "settings: WORKERS='$WORKERS' CERTS='$CERTS' TESTS_ecdsa='$TESTS_ecdsa' TESTS_rsa='$TESTS_rsa'" \
         "RUNS=$RUNS H2_RUNS=$H2_RUNS DURATION=$DURATION WARMUP=$WARMUP WRK='-t$WRK_THREADS -c$WRK_CONNS'" \
         "MAX_OTHER=$MAX_OTHER NOISE_RETRIES=$NOISE_RETRIES QUIET_MAX=$QUIET_MAX QUIET_WAIT=$QUIET_WAIT" \
         "H2_OPTS='$H2_OPTS' H1_OPTS='$H1_OPTS' FULLHS_PROCS=$FULLHS_PROCS IDLE_CONNS=$IDLE_CONNS IDLE_MODES='$IDLE_MODES'" \
         "SYSCALLS=$SYSCALLS"
    echo "peers: ${PEER_NAMES[*]} (ports ${PEER_PORTS[*]})"
} > "$RES/env.txt"
cat "$RES/env.txt" >&2

# the backend, shared by all peers for the whole run
PRUN="$RUN/backend"; W=1; CERT=none; CHAIN=""; KEY=""; HAPEM=""
mkdir -p "$PRUN/backend-tmp"
start_proc backend 18080 "$PRUN/stdout.log" \
    'render backend-nginx.conf.in > $PRUN/backend.conf && exec nginx -e $PRUN/error.log -p $PRUN -c $PRUN/backend.conf'
BACKEND_PID="$LAST_PID"
for b in "$BACKEND" "$BACKEND_CLOSE"; do
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --data-binary @"$TOOLS/body.json" "http://$b/score")"
    [[ "$code" == 200 ]] || die "backend $b answered $code"
done
conn="$(curl -s -o /dev/null -D - --max-time 5 --data-binary @"$TOOLS/body.json" "http://$BACKEND_CLOSE/score" | tr -d '\r' | grep -i '^connection:' || true)"
[[ "${conn,,}" == "connection: close" ]] || die "backend $BACKEND_CLOSE did not answer 'Connection: close' (got '$conn')"
DIRECT_DONE=0
CLOSE_DIRECT_DONE=0

# start_peers: start every peer for the current $CERT and $W; PIDS[i] = its PID
start_peers() {
    local i
    PIDS=()
    for i in "${!PEER_NAMES[@]}"; do
        PRUN="$RUN/$CERT-w$W/${PEER_NAMES[i]}"
        mkdir -p "$PRUN/nginx-tmp"
        start_proc "${PEER_NAMES[i]}" "${PEER_PORTS[i]}" "$PRUN/stdout.log" "${PEER_CMDS[i]}"
        PIDS[i]="$LAST_PID"
    done
}

for CERT in $CERTS; do
    CHAIN="$CERTDIR/$CERT-chain.pem"; KEY="$CERTDIR/$CERT.key"; HAPEM="$CERTDIR/$CERT-haproxy.pem"
    [[ -f "$CHAIN" && -f "$KEY" && -f "$HAPEM" ]] || die "certificate files for $CERT missing (run gen-certs.sh)"
    tests_var="TESTS_$CERT"; TESTS="${!tests_var}"
    [[ -n "$TESTS" ]] || continue
    for W in $WORKERS; do
        log "=== cert $CERT, $W worker(s): tests: $TESTS"

        # idle memory: freshly started peers for each mode, because memory a
        # process has freed (glibc keeps it) would be reused by the next mode
        if [[ " $TESTS " == *" idle "* ]]; then
            for mode in $IDLE_MODES; do
                start_peers
                for i in "${!PEER_NAMES[@]}"; do
                    run_idle "${PEER_NAMES[i]}" "${PEER_PORTS[i]}" "${PIDS[i]}" "$mode"
                done
                stop_started 1          # the peers; the backend (STARTED[0]) stays
            done
        fi

        start_peers
        for i in "${!PEER_NAMES[@]}"; do smoke "${PEER_NAMES[i]}" "${PEER_PORTS[i]}"; done

        # warm-up, not recorded
        for i in "${!PEER_NAMES[@]}"; do
            wrk -t1 -c"$WRK_CONNS" -d"${WARMUP}s" -s "$TOOLS/post.lua" \
                "https://127.0.0.1:${PEER_PORTS[i]}$SCORE_PATH" >/dev/null 2>&1 || true
        done

        if [[ " $TESTS " == *" keepalive "* ]]; then
            for run in $(seq "$RUNS"); do
                if (( ! DIRECT_DONE )); then       # reference row: backend over plain HTTP
                    W_SAVE="$W"; CERT_SAVE="$CERT"; W=1; CERT=plain
                    run_wrk backend-direct keepalive "$run" "http://$BACKEND/score" "$BACKEND_PID"
                    W="$W_SAVE"; CERT="$CERT_SAVE"
                fi
                for i in "${!PEER_NAMES[@]}"; do
                    run_wrk "${PEER_NAMES[i]}" keepalive "$run" \
                        "https://127.0.0.1:${PEER_PORTS[i]}$SCORE_PATH" "${PIDS[i]}"
                done
            done
            DIRECT_DONE=1
        fi

        if [[ " $TESTS " == *" handshake "* ]]; then
            for run in $(seq "$RUNS"); do
                for i in "${!PEER_NAMES[@]}"; do
                    run_wrk "${PEER_NAMES[i]}" handshake "$run" \
                        "https://127.0.0.1:${PEER_PORTS[i]}$SCORE_PATH" "${PIDS[i]}" -H 'Connection: close'
                done
            done
        fi

        if [[ " $TESTS " == *" fullhs "* ]]; then
            for run in $(seq "$RUNS"); do
                for i in "${!PEER_NAMES[@]}"; do
                    run_fullhs "${PEER_NAMES[i]}" "$run" "${PEER_PORTS[i]}" "${PIDS[i]}"
                done
            done
        fi

        if [[ " $TESTS " == *" h2 "* ]]; then
            for run in $(seq "$H2_RUNS"); do
                for proto in h2 h1; do
                    for i in "${!PEER_NAMES[@]}"; do
                        run_h2load "${PEER_NAMES[i]}" "$proto" "$run" "${PEER_PORTS[i]}" "${PIDS[i]}"
                    done
                done
            done
        fi

        if [[ " $TESTS " == *" testssl "* ]]; then
            for i in "${!PEER_NAMES[@]}"; do run_testssl "${PEER_NAMES[i]}" "${PEER_PORTS[i]}"; done
        fi

        stop_started 1          # this round's peers; the backend (STARTED[0]) stays

        # closebackend: the same peers and keep-alive load, restarted in front of the
        # backend's closing listener, so that every request opens a backend connection
        if [[ " $TESTS " == *" closebackend "* ]]; then
            BACKEND_SAVE="$BACKEND"; BACKEND="$BACKEND_CLOSE"
            start_peers
            for i in "${!PEER_NAMES[@]}"; do
                code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --resolve "scoring.example.test:${PEER_PORTS[i]}:127.0.0.1" \
                    --cacert "$CERTDIR/ca.pem" --data-binary @"$TOOLS/body.json" -H "Authorization: Bearer $KEY1" \
                    "https://scoring.example.test:${PEER_PORTS[i]}$SCORE_PATH" || true)"
                [[ "$code" == 200 ]] || log "  closebackend ${PEER_NAMES[i]}: a request answered $code, not 200"
                wrk -t1 -c"$WRK_CONNS" -d"${WARMUP}s" -s "$TOOLS/post.lua" \
                    "https://127.0.0.1:${PEER_PORTS[i]}$SCORE_PATH" >/dev/null 2>&1 || true
            done
            for run in $(seq "$RUNS"); do
                if (( ! CLOSE_DIRECT_DONE )); then # reference row: the closing backend over plain HTTP
                    W_SAVE="$W"; CERT_SAVE="$CERT"; W=1; CERT=plain
                    run_wrk backend-direct closebackend "$run" "http://$BACKEND/score" "$BACKEND_PID"
                    W="$W_SAVE"; CERT="$CERT_SAVE"
                fi
                for i in "${!PEER_NAMES[@]}"; do
                    run_wrk "${PEER_NAMES[i]}" closebackend "$run" \
                        "https://127.0.0.1:${PEER_PORTS[i]}$SCORE_PATH" "${PIDS[i]}"
                done
            done
            CLOSE_DIRECT_DONE=1
            BACKEND="$BACKEND_SAVE"
            stop_started 1
        fi
    done
done

python3 "$TOOLS/summarize.py" "$JSONL" "$RES/env.txt" | tee "$RES/table.md"
log "results in $RES"

#!/bin/sh
# wrk-compare.sh measures, in one run, requests/s and p99 latency of a small
# fasthttp upstream on loopback (a) directly, (b) through the berth gateway
# (internal/gateway) and (c) through nginx with keep-alive connections to
# the upstream, and the ratio gateway/nginx. It sends to loopback only.
#
#   internal/gateway/testdata/wrk-compare.sh           # 64 connections, 10s per run, 3 rounds
#   CONNS=128 DUR=20s ROUNDS=1 internal/gateway/testdata/wrk-compare.sh
#   PROFILE=1 internal/gateway/testdata/wrk-compare.sh # and a CPU profile of the gateway
#   NGINX_HEADERS=1 ...  # nginx also sets X-Forwarded-For/-Proto/-Host and X-Request-Id,
#                        # as the gateway does (by default it sets none of them)
#
# Each round runs wrk against the three in turn (the order alternates
# between rounds); the summary gives each one's median, and the median of
# the rounds' gateway/nginx ratios. On a machine shared with other work the
# rounds differ: look at the spread.
#
# Needs go, wrk, nginx and curl (Debian: apt-get install -y wrk nginx curl).
set -eu
cd "$(dirname "$0")/../../.."

CONNS=${CONNS:-64}
DUR=${DUR:-10s}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
UP=127.0.0.1:${UP_PORT:-18181}
GW=127.0.0.1:${GW_PORT:-18182}
NG=127.0.0.1:${NG_PORT:-18183}
for cmd in go wrk nginx curl awk; do
	command -v $cmd >/dev/null || { echo "wrk-compare: $cmd is missing" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/wrk-compare.XXXXXX)
pids=""
cleanup() {
	for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	if [ -n "${PROFILE:-}" ] && [ -s "$tmp/gateway.cpu" ]; then
		cp "$tmp/gateway.cpu" /tmp/gateway.cpu
		cp "$tmp/gw.test" /tmp/gateway.test
		echo "CPU profile of the gateway: go tool pprof /tmp/gateway.test /tmp/gateway.cpu"
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

go test -c -o "$tmp/gw.test" ./internal/gateway

# serve role listen [test flags]: TestWrkServe runs the upstream or the
# gateway, until SIGTERM.
serve() {
	role=$1 listen=$2
	shift 2
	BERTH_WRK_ROLE=$role BERTH_WRK_LISTEN=$listen BERTH_WRK_UPSTREAM=$UP BERTH_WRK_FOR=24h \
		"$tmp/gw.test" -test.run '^TestWrkServe$' "$@" >"$tmp/$role.log" 2>&1 &
	pids="$pids $!"
}
serve upstream "$UP"
if [ -n "${PROFILE:-}" ]; then
	serve gateway "$GW" -test.cpuprofile="$tmp/gateway.cpu"
else
	serve gateway "$GW"
fi

mkdir -p "$tmp/nginx"
NGINX_EXTRA=""
if [ -n "${NGINX_HEADERS:-}" ]; then
	NGINX_EXTRA='
			proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
			proxy_set_header X-Forwarded-Proto $scheme;
			proxy_set_header X-Forwarded-Host $http_host;
			proxy_set_header X-Request-Id $request_id;'
fi
cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $tmp/nginx/body;
	proxy_temp_path $tmp/nginx/proxy;
	fastcgi_temp_path $tmp/nginx/fastcgi;
	uwsgi_temp_path $tmp/nginx/uwsgi;
	scgi_temp_path $tmp/nginx/scgi;
	upstream app {
		server $UP;
		keepalive 64;
	}
	server {
		listen $NG;
		location / {
			proxy_pass http://app;
			proxy_http_version 1.1;
			proxy_set_header Connection "";$NGINX_EXTRA
		}
	}
}
CONF
chmod -R a+rX "$tmp"
nginx -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" -e "$tmp/nginx/error.log" -g 'daemon off;' &
pids="$pids $!"

for addr in $UP $GW $NG; do
	i=0
	until curl -fsS -o /dev/null -H 'Host: bench.test' "http://$addr/" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -ge 100 ]; then
			echo "wrk-compare: $addr does not answer" >&2
			cat "$tmp"/*.log "$tmp/nginx/error.log" >&2 || true
			exit 1
		fi
		sleep 0.1
	done
done

# run name addr: one wrk run, appended to $tmp/results as "round name rps p99(ms) errors".
run() {
	out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -H 'Host: bench.test' "http://$2/")
	echo "$out" | awk -v round="$r" -v name="$1" '
		/^Requests\/sec:/ { rps = $2 }
		$1 == "99%" { p99 = $2; if (p99 ~ /us$/) { sub(/us$/, "", p99); p99 /= 1000 } else if (p99 ~ /ms$/) { sub(/ms$/, "", p99) } else if (p99 ~ /s$/) { sub(/s$/, "", p99); p99 *= 1000 } }
		/Non-2xx|Socket errors/ { errs = errs $0 ";" }
		END { printf "%s %s %s %.2f %s\n", round, name, rps, p99, (errs == "" ? "-" : errs) }' >>"$tmp/results"
	tail -1 "$tmp/results" | awk '{ printf "  round %s  %-8s %10.0f req/s  p99 %7.2f ms  %s\n", $1, $2, $3, $4, ($5 == "-" ? "" : $5) }'
}

echo "wrk -t$THREADS -c$CONNS -d$DUR --latency -H 'Host: bench.test' http://<addr>/"
echo "($(nproc) CPUs, $(go env GOVERSION), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'); nginx sets forwarding headers: ${NGINX_HEADERS:+yes}${NGINX_HEADERS:-no})"
r=1
while [ $r -le "$ROUNDS" ]; do
	if [ $((r % 2)) -eq 1 ]; then
		run direct "$UP"; run gateway "$GW"; run nginx "$NG"
	else
		run nginx "$NG"; run gateway "$GW"; run direct "$UP"
	fi
	r=$((r + 1))
done

awk '
	function median(a, n,    i, j, t) {
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	{ n[$2]++; rps[$2, n[$2]] = $3; p99[$2, n[$2]] = $4; byround[$1, $2] = $3 }
	END {
		print "median over " n["gateway"] " rounds:"
		split("direct gateway nginx", names, " ")
		for (k = 1; k <= 3; k++) {
			name = names[k]
			delete x; delete y
			for (i = 1; i <= n[name]; i++) { x[i] = rps[name, i]; y[i] = p99[name, i] }
			printf "  %-8s %10.0f req/s  p99 %7.2f ms\n", name, median(x, n[name]), median(y, n[name])
		}
		for (i = 1; i <= n["gateway"]; i++) { g[i] = rps["gateway", i]; ng[i] = rps["nginx", i] }
		printf "  ratio gateway/nginx of the medians: %.2f\n", median(g, n["gateway"]) / median(ng, n["nginx"])
		delete x
		for (i = 1; i <= n["gateway"]; i++) x[i] = byround[i, "gateway"] / byround[i, "nginx"]
		printf "  ratio gateway/nginx, median of the rounds: %.2f", median(x, n["gateway"])
		lo = 99; hi = 0
		for (i = 1; i <= n["gateway"]; i++) { if (x[i] < lo) lo = x[i]; if (x[i] > hi) hi = x[i] }
		printf "  (rounds: %.2f to %.2f)\n", lo, hi
	}' "$tmp/results"

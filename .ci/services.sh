#!/usr/bin/env bash
# Start any of RabbitMQ, Redis and PostgreSQL that is down, and wait until each accepts connections.
# Exits non-zero when one cannot be brought up (CI treats a missing service as a failure).
set -u
quiet=${1:-}
say() { [ "$quiet" = "--quiet" ] || echo "services: $*"; }

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {  # name port seconds
  local deadline=$((SECONDS + $3))
  while ! up "$2"; do
    if [ $SECONDS -ge $deadline ]; then echo "services: $1 did not come up on port $2" >&2; return 1; fi
    sleep 0.5
  done
  say "$1 is up on port $2"
}

start() {  # name port command...
  local name=$1 port=$2; shift 2
  if up "$port"; then say "$name is up on port $port"; return 0; fi
  if ! command -v "$1" >/dev/null 2>&1; then echo "services: $name is down and $1 is not installed" >&2; return 1; fi
  say "starting $name"
  "$@" >/dev/null 2>&1 || true
  wait_up "$name" "$port" 90
}

status=0
start RabbitMQ 5672 rabbitmq-server -detached || status=1
start Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no || status=1
if ! up 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start >/dev/null 2>&1 || true
  fi
  wait_up PostgreSQL 5432 60 || status=1
else
  say "PostgreSQL is up on port 5432"
fi
exit $status

#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ answer on their standard local ports.
# Starts the ones that are down (the commands of this machine kind), installs them with apt-get on a
# Debian/Ubuntu machine that lacks them, and waits until each accepts connections.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  local i
  for ((i = 0; i < $3 * 2; i++)); do up "$2" && return 0; sleep 0.5; done
  echo "services.sh: $1 did not come up on port $2 within $3 s" >&2
  return 1
}

need_apt=()
command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v rabbitmq-server >/dev/null || need_apt+=(rabbitmq-server)
if ((${#need_apt[@]})) && ! { up 5432 && up 6379 && up 5672; }; then
  echo "services.sh: installing ${need_apt[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! up 5432; then
  echo "services.sh: starting PostgreSQL" >&2
  ver=$(ls /etc/postgresql | sort -V | tail -n1)
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  # The tests connect over TCP as the postgres role without a password, as on this machine kind.
  if [ -f "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
fi
if ! up 6379; then
  echo "services.sh: starting Redis" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! up 5672; then
  echo "services.sh: starting RabbitMQ" >&2
  rabbitmq-server -detached
fi

wait_for PostgreSQL 5432 60
wait_for Redis 6379 30
wait_for RabbitMQ 5672 120

# The tests use the database `test`.
if ! psql -h 127.0.0.1 -U postgres -d test -qtAc 'select 1' >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test' >/dev/null
fi
echo "services.sh: PostgreSQL, Redis and RabbitMQ are up" >&2

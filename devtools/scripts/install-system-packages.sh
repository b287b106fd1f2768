#!/usr/bin/env bash
# Installs the machine packages evoflow needs when they are missing: the PostgreSQL server
# (initdb, pg_ctl), its client (psql), redis-server, PgBouncer and Chromium for the tests.
# Debian/Ubuntu via apt-get, as root; elsewhere it says what to install and fails.
set -euo pipefail

need=()
have_postgres() {
  command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}
have_postgres || need+=(postgresql postgresql-contrib)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# The tests run the shared rate limiter's Redis backend against a throwaway redis-server.
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
# The topology test (tests/topology/) and `make topology` put Debian's PgBouncer in front of a
# cluster of their own.
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# The browser tests drive Debian's Chromium through Playwright (its own browser download is not
# used); a font package keeps the screenshots legible.
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install these packages first: ${need[*]}" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root to install: ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's postgresql package starts a cluster of its own on 5432; evoflow runs its own cluster
# on EVOFLOW_PG_PORT and does not need it, but leaves it alone. The same holds for the pgbouncer
# package's own service on 6432.

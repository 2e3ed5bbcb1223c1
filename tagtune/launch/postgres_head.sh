#!/usr/bin/env bash
# The MLflow server's database on the cluster's head (cluster.yaml's head_setup_commands; the
# why and the figures: docs/tracking.md). Debian's Postgres, listening on the head's private
# address only; a login user `tagtune` whose password is generated here once
# (~/.mlflow/db-password, mode 600: it never leaves the head); the two databases of
# `python -m tagtune.launch.mlflow_server`: mlflow (the runs) and mlflow_auth (its users).
# Idempotent: `ray up` runs it again on every update.
#
#   bash tagtune/launch/postgres_head.sh HEAD_PRIVATE_IP
set -euo pipefail
HEAD_IP=${1:?usage: postgres_head.sh HEAD_PRIVATE_IP}
PASSWORD_FILE=$HOME/.mlflow/db-password

command -v pg_conftool >/dev/null || {
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
}
mkdir -p "$HOME/.mlflow"
test -s "$PASSWORD_FILE" || (umask 077 && openssl rand -hex 24 > "$PASSWORD_FILE")
chmod 600 "$PASSWORD_FILE"

psql() { (cd / && sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 "$@"); }
# Never every interface: the MLflow server on this head is the one client (over the private
# address, as its --backend-store-uri says), and only for its two databases.
sudo pg_conftool set listen_addresses "$HEAD_IP"
HBA=$(psql -tAc 'SHOW hba_file')
RULE="host mlflow,mlflow_auth tagtune $HEAD_IP/32 scram-sha-256"
sudo grep -qxF "$RULE" "$HBA" || echo "$RULE" | sudo tee -a "$HBA" >/dev/null
sudo systemctl restart postgresql

psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'tagtune'" | grep -q 1 || psql -c 'CREATE ROLE tagtune LOGIN'
# The password on stdin (printf is bash's own): never in a command line that `ps` shows.
printf "ALTER ROLE tagtune PASSWORD '%s';\n" "$(cat "$PASSWORD_FILE")" | psql
for db in mlflow mlflow_auth; do
    psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
        || (cd / && sudo -u postgres createdb -O tagtune "$db")
done

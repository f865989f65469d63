#!/usr/bin/env bash
# Point-in-time restore drill with the local (Debian) PostgreSQL binaries, no cluster needed:
# the same mechanism CloudNativePG uses (base backup + archived WAL + recovery target).
# Writes 100 rows, takes a base backup, writes 50 more, notes the time, writes 25 "bad"
# rows, then restores the base backup to the noted time and expects exactly 150 rows.
set -euo pipefail

bin=${PG_BIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
port=${DRILL_PORT:-55439}
work=$(mktemp -d /tmp/careplane-pitr.XXXXXX)
chmod 755 "$work"
as=()
if [[ $(id -u) == 0 ]]; then
    # initdb refuses to run as root.
    chown postgres: "$work"
    as=(runuser -u postgres --)
fi
run() { "${as[@]}" "$@"; }
sql() { run "$bin/psql" -h "$work" -p "$1" -d postgres -v ON_ERROR_STOP=1 -Atqc "$2"; }

cleanup() {
    for d in primary restore; do
        if [[ -f $work/$d/postmaster.pid ]]; then
            run "$bin/pg_ctl" -D "$work/$d" -m immediate stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

run mkdir "$work/archive"
run "$bin/initdb" -D "$work/primary" -A trust -U postgres >/dev/null
cat <<CONF | run tee -a "$work/primary/postgresql.conf" >/dev/null
port = $port
listen_addresses = ''
unix_socket_directories = '$work'
wal_level = replica
archive_mode = on
archive_command = 'test ! -f $work/archive/%f && cp %p $work/archive/%f'
CONF
run "$bin/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null

sql "$port" "CREATE TABLE appointments (id bigserial PRIMARY KEY, note text, at timestamptz DEFAULT now());
             INSERT INTO appointments (note) SELECT 'before backup' FROM generate_series(1, 100);"
run "$bin/pg_basebackup" -h "$work" -p "$port" -U postgres -D "$work/base" -X stream -c fast
sql "$port" "INSERT INTO appointments (note) SELECT 'after backup' FROM generate_series(1, 50);"
sleep 1
target=$(sql "$port" "SELECT now()")
sleep 1
sql "$port" "INSERT INTO appointments (note) SELECT 'the mistake' FROM generate_series(1, 25);"
# Close the WAL segment so the archiver ships the last writes, then wait for it.
wal=$(sql "$port" "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 50); do
    [[ -f $work/archive/$wal ]] && break
    sleep 0.2
done
run "$bin/pg_ctl" -D "$work/primary" -m fast -w stop >/dev/null

run cp -a "$work/base" "$work/restore"
cat <<CONF | run tee -a "$work/restore/postgresql.conf" >/dev/null
port = $((port + 1))
archive_mode = off
restore_command = 'cp $work/archive/%f %p'
recovery_target_time = '$target'
recovery_target_action = 'promote'
CONF
run touch "$work/restore/recovery.signal"
run "$bin/pg_ctl" -D "$work/restore" -l "$work/restore.log" -w start >/dev/null
for _ in $(seq 50); do
    [[ $(sql $((port + 1)) "SELECT pg_is_in_recovery()") == f ]] && break
    sleep 0.2
done

rows=$(sql $((port + 1)) "SELECT count(*) FROM appointments")
bad=$(sql $((port + 1)) "SELECT count(*) FROM appointments WHERE note = 'the mistake'")
echo "restored to $target: $rows rows ($bad written after the target)"
if [[ $rows == 150 && $bad == 0 ]]; then
    echo "restore drill: 1 passed, 0 failed"
else
    echo "restore drill: 0 passed, 1 failed (expected 150 rows and none after the target)"
    exit 1
fi

#!/usr/bin/env bash
# Make a PostgreSQL server available for development and tests, and create
# databases in it. 'ensure' uses the PostgreSQL that answers on 127.0.0.1:5432
# (as user postgres, without password) when there is one, and otherwise
# initialises and starts a private cluster (data in <root>/.run/pg, port 55432).
# Idempotent; 'stop' only ever stops that private cluster.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PGBIN="${PG_BINDIR:-}"
if [[ -z "$PGBIN" ]]; then
    PGBIN=/usr/lib/postgresql/15/bin
    if [[ ! -x "$PGBIN/initdb" ]]; then
        # another major version, if that is what is installed
        for d in /usr/lib/postgresql/*/bin; do [[ -x "$d/initdb" ]] && PGBIN="$d"; done
    fi
fi
MARKER_NAME=.created-by-pg-sh

usage() {
    cat <<USAGE
Usage: $(basename "$0") COMMAND [options]

Commands:
  ensure [--dir DIR] [--port P] [--private-port Q]
        If a PostgreSQL on 127.0.0.1:P (default 5432) accepts user postgres without
        a password, use it; otherwise initialise (once) and start a private cluster in
        DIR (default <root>/.run/pg) on 127.0.0.1:Q (default 55432), trust auth,
        unix socket in DIR. Prints PGHOST=... PGPORT=... PGUSER=postgres lines:
          set -a; eval "\$($(basename "$0") ensure)"; set +a
  stop [--dir DIR]
        Stop the private cluster in DIR if it runs (never another PostgreSQL).
  status [--dir DIR] [--port P] [--private-port Q]
        Say which server 'ensure' would use and whether it runs; exit 0 if one answers.
  create-dbs [--prefix PFX] [ensure options] NAME...
        Create databases PFX+NAME if missing (e.g. orders payments inventory),
        each owned by a login role of the same name (created if missing: no
        superuser, no CREATEDB, no CREATEROLE) that alone may connect to it;
        tables left by an older set-up pass to that role. A daemon connects as
        its database's role (the superuser keeps access for operators).
        Connects with PGHOST/PGPORT/PGUSER from the environment when PGPORT is set,
        otherwise runs 'ensure' first.
  --help
        This text.

Examples:
  $(basename "$0") ensure
  $(basename "$0") create-dbs orders payments inventory
  $(basename "$0") create-dbs --prefix test_ orders payments inventory
  $(basename "$0") ensure --port 1 --dir /tmp/pgtest    # force a private cluster
  $(basename "$0") stop --dir /tmp/pgtest
USAGE
}

die() { echo "pg.sh: $*" >&2; exit 1; }
info() { echo "pg.sh: $*" >&2; }

CMD="${1:-}"
[[ -n "$CMD" ]] || { usage >&2; exit 2; }
shift
case "$CMD" in
    -h|--help|help) usage; exit 0 ;;
    ensure|stop|status|create-dbs) ;;
    *) die "unknown command: $CMD (see --help)" ;;
esac

DIR="$ROOT/.run/pg"
PROBE_PORT=5432
PRIVATE_PORT=55432
PREFIX=""
NAMES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
        --port) PROBE_PORT="${2:?--port needs a number}"; shift 2 ;;
        --private-port) PRIVATE_PORT="${2:?--private-port needs a number}"; shift 2 ;;
        --prefix) PREFIX="${2?--prefix needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [[ "$CMD" == create-dbs ]] || die "unexpected argument: $1"; NAMES+=("$1"); shift ;;
    esac
done
[[ "$PROBE_PORT" =~ ^[0-9]+$ && "$PRIVATE_PORT" =~ ^[0-9]+$ ]] || die "ports must be numbers"
DIR="$(realpath -m "$DIR")"

# -------------------------------------------------------------------- helpers
answers() { # port: a server accepts connections there
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 3 >/dev/null 2>&1
}

usable() { # port: user postgres gets in without a password
    PGCONNECT_TIMEOUT=5 psql -X -w -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}

as_postgres() { runuser -u postgres -- "$@"; }

private_running() {
    [[ -f "$DIR/PG_VERSION" ]] && as_postgres "$PGBIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1
}

print_env() { # port
    printf 'PGHOST=127.0.0.1\nPGPORT=%s\nPGUSER=postgres\n' "$1"
}

init_private() {
    local parent
    id postgres >/dev/null 2>&1 || die "no user 'postgres' (install the postgresql package: deploy/install-deps.sh)"
    [[ -x "$PGBIN/initdb" ]] || die "$PGBIN/initdb not found (deploy/install-deps.sh installs postgresql)"
    if [[ -e "$DIR" && -n "$(ls -A "$DIR" 2>/dev/null)" ]]; then
        die "$DIR exists, is not empty and holds no cluster; remove it or choose another --dir"
    fi
    parent="$(dirname "$DIR")"
    mkdir -p "$DIR"
    chown postgres:postgres "$DIR"
    chmod 700 "$DIR"
    as_postgres test -x "$parent" -a -w "$DIR" \
        || die "user postgres cannot reach $DIR (a parent folder lacks o+x); choose another --dir"
    info "initialising a private cluster in $DIR"
    if ! as_postgres "$PGBIN/initdb" -D "$DIR" -U postgres --auth=trust --encoding=UTF8 \
            --locale=C.UTF-8 --no-instructions >"$DIR.initdb.log" 2>&1; then
        cat "$DIR.initdb.log" >&2
        die "initdb failed"
    fi
    rm -f "$DIR.initdb.log"
    # Settings for a throw-away dev/test server. fsync=off only matters when the
    # machine itself crashes; commits stay synchronous for the daemons' semantics.
    as_postgres tee -a "$DIR/postgresql.conf" >/dev/null <<CONF

# ---- added by deploy/postgres/pg.sh
listen_addresses = '127.0.0.1'
port = $PRIVATE_PORT
unix_socket_directories = '$DIR'
max_connections = 200
fsync = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
CONF
    as_postgres touch "$DIR/$MARKER_NAME"
}

ensure() { # prints env lines on stdout
    if answers "$PROBE_PORT"; then
        if usable "$PROBE_PORT"; then
            info "using the PostgreSQL on 127.0.0.1:$PROBE_PORT"
            print_env "$PROBE_PORT"
            return 0
        fi
        info "PostgreSQL on 127.0.0.1:$PROBE_PORT refuses user postgres without password; using a private cluster"
    fi
    mkdir -p "$(dirname "$DIR")"
    # One initialisation/start at a time (tests may call this concurrently).
    exec 8>"$DIR.lock"
    flock 8
    if [[ ! -f "$DIR/PG_VERSION" ]]; then
        init_private
    elif [[ ! -f "$DIR/$MARKER_NAME" ]]; then
        die "$DIR holds a cluster that pg.sh did not create; not touching it"
    fi
    local port
    port="$(sed -n "s/^port = \([0-9]*\).*/\1/p" "$DIR/postgresql.conf" | tail -n 1)"
    [[ "$port" == "$PRIVATE_PORT" ]] || die "$DIR was set up for port $port; use --private-port $port or another --dir"
    if ! private_running; then
        answers "$PRIVATE_PORT" && die "port $PRIVATE_PORT is taken by another server; use --private-port"
        info "starting the private cluster in $DIR on 127.0.0.1:$PRIVATE_PORT"
        # 8>&-: the server must not inherit (and so hold forever) the lock.
        if ! as_postgres "$PGBIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -w -t 60 start >/dev/null 2>&1 8>&-; then
            tail -n 20 "$DIR/server.log" >&2 || true
            die "the private cluster did not start"
        fi
    fi
    local deadline=$((SECONDS + 30))
    until usable "$PRIVATE_PORT"; do
        (( SECONDS < deadline )) || die "the private cluster on port $PRIVATE_PORT does not accept connections"
        sleep 0.2
    done
    exec 8>&-
    print_env "$PRIVATE_PORT"
}

# The role of database $1 (same name) owns it and is the only non-superuser
# that may connect. Names are checked ([a-z0-9_]) before they get here.
own_database() { # db
    local db="$1"
    psql -X -w -q -v ON_ERROR_STOP=1 -d postgres >/dev/null 2>"$err" <<SQL || { cat "$err" >&2; return 1; }
DO \$\$BEGIN
  CREATE ROLE "$db" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
EXCEPTION WHEN duplicate_object THEN NULL;
END\$\$;
ALTER ROLE "$db" NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
ALTER DATABASE "$db" OWNER TO "$db";
REVOKE ALL ON DATABASE "$db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE "$db" TO "$db";
SQL
    # Objects an older set-up created as the superuser pass to the role (a
    # table carries its indexes and serial sequences along).
    psql -X -w -q -v ON_ERROR_STOP=1 -d "$db" >/dev/null 2>"$err" <<SQL || { cat "$err" >&2; return 1; }
DO \$\$DECLARE r record;
BEGIN
  FOR r IN SELECT c.oid::regclass AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
             AND c.relowner <> '"$db"'::regrole LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO %I', r.t, '$db');
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS f FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE n.nspname = 'public' AND p.proowner <> '"$db"'::regrole LOOP
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', r.f, '$db');
  END LOOP;
END\$\$;
SQL
}

# -------------------------------------------------------------------- commands
case "$CMD" in
    ensure)
        command -v psql >/dev/null || die "psql not found (run deploy/install-deps.sh)"
        ensure
        ;;
    stop)
        if private_running; then
            [[ -f "$DIR/$MARKER_NAME" ]] || die "$DIR holds a cluster that pg.sh did not create; not stopping it"
            as_postgres "$PGBIN/pg_ctl" -D "$DIR" -m fast -w -t 60 stop >/dev/null
            info "stopped the private cluster in $DIR"
        else
            info "no private cluster runs in $DIR"
        fi
        ;;
    status)
        if answers "$PROBE_PORT" && usable "$PROBE_PORT"; then
            echo "PostgreSQL on 127.0.0.1:$PROBE_PORT answers (ensure uses it)"
            private_running && echo "private cluster in $DIR also runs"
            exit 0
        elif private_running; then
            echo "private cluster in $DIR runs on 127.0.0.1:$PRIVATE_PORT"
            exit 0
        else
            echo "no usable PostgreSQL: nothing on 127.0.0.1:$PROBE_PORT, private cluster in $DIR stopped"
            exit 3
        fi
        ;;
    create-dbs)
        [[ ${#NAMES[@]} -gt 0 ]] || die "create-dbs needs database names"
        if [[ -z "${PGPORT:-}" ]]; then
            envs="$(ensure)" || exit 1
            eval "$envs"
        fi
        export PGHOST="${PGHOST:-127.0.0.1}" PGPORT PGUSER="${PGUSER:-postgres}"
        db_exists() { [[ "$(psql -X -w -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'")" == 1 ]]; }
        err="$(mktemp)"
        trap 'rm -f "$err"' EXIT
        created=() present=()
        for n in "${NAMES[@]}"; do
            db="$PREFIX$n"
            [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "bad database name: $db (use [a-z0-9_])"
            if db_exists "$db"; then
                present+=("$db")
            elif psql -X -w -q -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null 2>"$err"; then
                created+=("$db")
            elif db_exists "$db"; then # created meanwhile by a concurrent caller
                present+=("$db")
            else
                cat "$err" >&2
                die "cannot create database $db on $PGHOST:$PGPORT"
            fi
        done
        for db in "${created[@]}" "${present[@]}"; do
            own_database "$db" || die "cannot give database $db its own role on $PGHOST:$PGPORT"
        done
        echo "pg.sh: databases on $PGHOST:$PGPORT: created ${created[*]:-none}; present ${present[*]:-none}; each owned by the role of its name"
        ;;
esac

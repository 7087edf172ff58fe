#!/usr/bin/env bash
# Make a PostgreSQL server available for development and tests, and create
# databases in it. 'ensure' uses the PostgreSQL that answers on 127.0.0.1:5432
# (as user postgres, without password) when there is one, and otherwise
# initialises and starts a private cluster (data in <root>/.run/pg, port 55432).
# Idempotent; 'stop' only ever stops that private cluster. 'ensure --secure'
# always uses a private cluster with TLS and scram-sha-256 for the daemon
# roles; 'passwords' gives roles random passwords and writes a pgpass file.
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
  ensure --secure [--dir DIR] [--private-port Q]
        Always a private cluster (never the server on port P), set up secure:
        TLS on (TLS 1.2+; server certificate from a throw-away CA made with
        openssl, SAN DNS:localhost,IP:127.0.0.1; the CA's key is deleted once it
        signed; its certificate is DIR.ca.pem), every role but postgres only over
        'hostssl' with scram-sha-256 (no plain TCP, no trust), postgres only over
        the unix socket in DIR (mode 0700: root and postgres). Prints
        PGHOST=DIR PGPORT=Q PGUSER=postgres PGSSLROOTCERT=DIR.ca.pem.
        A daemon then uses e.g.
          DATABASE_URL='host=localhost port=Q dbname=orders user=orders sslmode=verify-full'
        with PGSSLROOTCERT (or sslrootcert=) and PGPASSFILE (see 'passwords').
  stop [--dir DIR]
        Stop the private cluster in DIR if it runs (never another PostgreSQL).
  status [--dir DIR] [--port P] [--private-port Q]
        Say which server 'ensure' would use and whether it runs; exit 0 if one answers.
  create-dbs [--prefix PFX] [--passfile FILE] [ensure options] NAME...
        Create databases PFX+NAME if missing (e.g. orders payments inventory),
        each owned by a login role of the same name (created if missing: no
        superuser, no CREATEDB, no CREATEROLE) that alone may connect to it;
        tables left by an older set-up pass to that role. A daemon connects as
        its database's role (the superuser keeps access for operators).
        Connects with PGHOST/PGPORT/PGUSER from the environment when PGPORT is set,
        otherwise runs 'ensure' first. --passfile FILE: then 'passwords' too.
  passwords --passfile FILE [--prefix PFX] [--pass-host H] [ensure options] NAME...
        Gives each role PFX+NAME a new random password (32 of [A-Za-z0-9]: 190 bits)
        and writes it to the libpq password file FILE (mode 0600; lines of other
        roles are kept, the role's old line replaced):
          H:PORT:PFX+NAME:PFX+NAME:password        (H default '*': any host)
        The password goes to the server on psql's stdin as ALTER ROLE ...
        PASSWORD (statement logging off for that session), never on a command
        line or in the environment; it is stored scram-sha-256 hashed. Run it
        again to rotate; restart the daemons afterwards (they read FILE, named by
        PGPASSFILE, when they connect). libpq ignores FILE if group or others
        may read it (0600 or 0400 only).
  --help
        This text.

Examples:
  $(basename "$0") ensure
  $(basename "$0") create-dbs orders payments inventory
  $(basename "$0") create-dbs --prefix test_ orders payments inventory
  $(basename "$0") ensure --secure --dir /tmp/pgsec --private-port 55433
  $(basename "$0") passwords --passfile /etc/orders/pgpass orders payments inventory
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
    ensure|stop|status|create-dbs|passwords) ;;
    *) die "unknown command: $CMD (see --help)" ;;
esac

DIR="$ROOT/.run/pg"
PROBE_PORT=5432
PRIVATE_PORT=55432
PREFIX=""
NAMES=()
SECURE=0
PASSFILE=""
PASS_HOST="*"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
        --port) PROBE_PORT="${2:?--port needs a number}"; shift 2 ;;
        --private-port) PRIVATE_PORT="${2:?--private-port needs a number}"; shift 2 ;;
        --prefix) PREFIX="${2?--prefix needs a value}"; shift 2 ;;
        --secure) SECURE=1; shift ;;
        --passfile) PASSFILE="${2:?--passfile needs a file}"; shift 2 ;;
        --pass-host) PASS_HOST="${2:?--pass-host needs a host name}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) [[ "$CMD" == create-dbs || "$CMD" == passwords ]] || die "unexpected argument: $1"
           NAMES+=("$1"); shift ;;
    esac
done
[[ "$PROBE_PORT" =~ ^[0-9]+$ && "$PRIVATE_PORT" =~ ^[0-9]+$ ]] || die "ports must be numbers"
DIR="$(realpath -m "$DIR")"
[[ "$PASS_HOST" =~ ^[A-Za-z0-9.*_-]+$ ]] || die "bad --pass-host: $PASS_HOST"
SECURE_MARKER=.secure-by-pg-sh
CA_PEM="$DIR.ca.pem"

# -------------------------------------------------------------------- helpers
answers() { # port: a server accepts connections there
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$1" -t 3 >/dev/null 2>&1
}

usable() { # port [host]: user postgres gets in without a password
    PGCONNECT_TIMEOUT=5 psql -X -w -q -h "${2:-127.0.0.1}" -p "$1" -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1
}

as_postgres() { runuser -u postgres -- "$@"; }

private_running() {
    [[ -f "$DIR/PG_VERSION" ]] && as_postgres "$PGBIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1
}

print_env() { # port
    if [[ -f "$DIR/$SECURE_MARKER" ]]; then
        printf 'PGHOST=%s\nPGPORT=%s\nPGUSER=postgres\nPGSSLROOTCERT=%s\n' "$DIR" "$1" "$CA_PEM"
    else
        printf 'PGHOST=127.0.0.1\nPGPORT=%s\nPGUSER=postgres\n' "$1"
    fi
}

# TLS for a secure private cluster: a throw-away CA signs the server
# certificate (names localhost and 127.0.0.1), then its key is deleted, so
# nothing else can ever be signed by it. The CA certificate is $CA_PEM.
make_tls() {
    local t
    command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
    t="$(mktemp -d)"
    (
        set -e
        cd "$t"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=pg.sh throw-away CA" \
            -keyout ca.key -out ca.pem \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile ext.cnf -out server.pem
    ) >"$t/log" 2>&1 || { cat "$t/log" >&2; rm -rf "$t"; die "openssl failed"; }
    install -o postgres -g postgres -m 0600 "$t/server.key" "$DIR/server.key"
    install -o postgres -g postgres -m 0644 "$t/server.pem" "$DIR/server.crt"
    install -m 0644 "$t/ca.pem" "$CA_PEM"
    rm -rf "$t"
}

secure_private() { # after initdb: TLS, scram-sha-256, hostssl only
    make_tls
    as_postgres tee -a "$DIR/postgresql.conf" >/dev/null <<CONF
# ---- secure mode (pg.sh ensure --secure)
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
unix_socket_permissions = 0700
CONF
    as_postgres tee "$DIR/pg_hba.conf" >/dev/null <<'HBA'
# Written by deploy/postgres/pg.sh ensure --secure.
# The superuser only over the unix socket (its folder is 0700: root and postgres).
local     all  postgres                 trust
# Every other role: TLS and a scram-sha-256 password, nothing else.
hostssl   all  all       127.0.0.1/32   scram-sha-256
hostssl   all  all       ::1/128        scram-sha-256
hostnossl all  all       0.0.0.0/0      reject
hostnossl all  all       ::/0           reject
HBA
    as_postgres touch "$DIR/$SECURE_MARKER"
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
    (( SECURE )) && secure_private
    as_postgres touch "$DIR/$MARKER_NAME"
}

ensure() { # prints env lines on stdout
    if (( SECURE )); then
        : # always the private cluster
    elif answers "$PROBE_PORT"; then
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
    elif (( SECURE )) && [[ ! -f "$DIR/$SECURE_MARKER" ]]; then
        die "$DIR holds a trust-auth cluster, not a secure one; remove it or choose another --dir"
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
    local via=127.0.0.1
    [[ -f "$DIR/$SECURE_MARKER" ]] && via="$DIR"
    until usable "$PRIVATE_PORT" "$via"; do
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

# A new random password for each role, sent on psql's stdin (never argv or
# the environment; statement logging off for the session, so the server log
# never shows it), and the libpq password file $PASSFILE updated (0600).
set_passwords() { # role...
    local role pw port="${PGPORT:-5432}" tmp dir
    dir="$(dirname "$(realpath -m "$PASSFILE")")"
    mkdir -p "$dir"
    tmp="$(mktemp "$dir/.pgpass.XXXXXX")" # 0600, in the same folder: an atomic rename
    # keep the lines of other roles (and comments)
    if [[ -f "$PASSFILE" ]]; then
        local skip='^$'
        for role in "$@"; do skip+="|^[^:]*:[^:]*:[^:]*:$role:"; done
        grep -Ev "$skip" "$PASSFILE" >"$tmp" || true
    fi
    for role in "$@"; do
        # 32 characters of [A-Za-z0-9]: 190 bits, nothing pgpass must escape
        pw=""
        while (( ${#pw} < 32 )); do
            pw+="$(head -c 48 /dev/urandom | base64 -w0 | tr -dc 'A-Za-z0-9')"
        done
        pw="${pw:0:32}"
        if ! psql -X -w -q -v ON_ERROR_STOP=1 -d postgres >/dev/null 2>"$err" <<SQL; then
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET password_encryption = 'scram-sha-256';
ALTER ROLE "$role" PASSWORD '$pw';
SQL
            rm -f "$tmp"
            cat "$err" >&2
            die "cannot set the password of role $role on $PGHOST:$PGPORT"
        fi
        printf '%s:%s:%s:%s:%s\n' "$PASS_HOST" "$port" "$role" "$role" "$pw" >>"$tmp"
    done
    chmod 0600 "$tmp"
    mv -f "$tmp" "$PASSFILE"
    info "new passwords for ${*}; written to $PASSFILE (0600)"
}

connect_env() { # PGHOST/PGPORT/PGUSER of the server: given, or from ensure
    if [[ -z "${PGPORT:-}" ]]; then
        envs="$(ensure)" || exit 1
        eval "$envs"
    fi
    export PGHOST="${PGHOST:-127.0.0.1}" PGPORT PGUSER="${PGUSER:-postgres}"
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
        connect_env
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
        if [[ -n "$PASSFILE" ]]; then
            set_passwords "${created[@]}" "${present[@]}"
        fi
        ;;
    passwords)
        [[ ${#NAMES[@]} -gt 0 ]] || die "passwords needs role names"
        [[ -n "$PASSFILE" ]] || die "passwords needs --passfile FILE"
        connect_env
        err="$(mktemp)"
        trap 'rm -f "$err"' EXIT
        roles=()
        for n in "${NAMES[@]}"; do
            [[ "$PREFIX$n" =~ ^[a-z_][a-z0-9_]*$ ]] || die "bad role name: $PREFIX$n (use [a-z0-9_])"
            roles+=("$PREFIX$n")
        done
        set_passwords "${roles[@]}"
        ;;
esac

/*
 * ob_cli.c - see ob_cli.h.
 */
#include "ob_cli.h"

#include "tl_cli.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

volatile sig_atomic_t ob_stop = 0;

static const char usage_text[] =
    "Usage: orders-bench [options]\n"
    "\n"
    "Load generator of the order system: funds customers and stock, posts orders to\n"
    "order-service over keep-alive connections, learns from order-service's database\n"
    "when each order settled, and reports throughput, latency percentiles, outcomes,\n"
    "lost/duplicated orders and the CPU time and memory of every process involved\n"
    "(the three daemons, the Kafka broker, all PostgreSQL processes, itself).\n"
    "A tool, not a test: it never judges speed.\n"
    "\n"
    "Load:\n"
    "  --orders N             orders to post (default 2000)\n"
    "  --rate R               open loop: R orders per second on a fixed schedule; each\n"
    "                         latency counts from the order's intended send time, also\n"
    "                         when it had to wait for a free connection (no coordinated\n"
    "                         omission). 0 = closed loop at saturation: every connection\n"
    "                         sends its next order as soon as the last one was answered\n"
    "                         (default 0)\n"
    "  --connections C        keep-alive HTTP/1.1 connections (default 16)\n"
    "  --header 'Name: value' extra header on every request (repeatable, up to 16)\n"
    "  --token TOKEN          bearer token for POST /orders (scope orders:write);\n"
    "                         default $ORDERS_TOKEN\n"
    "  --admin-token TOKEN    bearer token for funding and stock (PUT /accounts,\n"
    "                         PUT /stock: payments:admin, inventory:admin); default\n"
    "                         $ADMIN_TOKEN, else the --token. The run command writes\n"
    "                         both to .run/tokens.env:\n"
    "                           set -a; . .run/tokens.env; set +a; orders-bench ...\n"
    "                         An 'Authorization:' --header replaces both\n"
    "  --request-timeout S    longest wait for one response, seconds (default 30)\n"
    "  --cacert FILE          CA certificates (PEM) that https:// URLs are verified\n"
    "                         against (default: the system's store)\n"
    "  --insecure             https:// without verifying the server (test set-ups)\n"
    "\n"
    "Orders (the run's customers and skus are named bench-<run id>-c<i> and -s<i>):\n"
    "  --customers N          distinct customers (default 20)\n"
    "  --skus N               distinct skus (default 10)\n"
    "  --quantity N           quantity per order (default 1)\n"
    "  --amount CENTS         amountCents per order (default 100)\n"
    "  --funds-factor F       funds and stock as a multiple of what the orders need;\n"
    "                         below 1 some orders are rejected (default 1: all confirm)\n"
    "\n";

/* In two parts: C99 promises string literals of 4095 bytes only. */
static const char usage_text2[] =
    "Where:\n"
    "  --url URL              order-service (default http://127.0.0.1:8080)\n"
    "  --payment-url URL      payment-service, to fund the customers\n"
    "                         (default http://127.0.0.1:8081)\n"
    "  --inventory-url URL    inventory-service, to set the stock\n"
    "                         (default http://127.0.0.1:8082)\n"
    "  --orders-db CONNINFO   order-service's database, read for settlement (libpq\n"
    "                         conninfo or URL; default $ORDERS_DATABASE_URL, else\n"
    "                         \"dbname=orders\" with the usual PG* variables)\n"
    "  --timeout S            longest wait for all orders to settle after the last POST,\n"
    "                         seconds (default 120)\n"
    "\n"
    "Processes measured (CPU time over the run, memory at its end):\n"
    "  --pids NAME=PID,...    the daemons' pids (or PID,PID,PID in the order order-,\n"
    "                         payment-, inventory-service); default: the process\n"
    "                         listening on each URL's port, else by process name\n"
    "  --broker-pid PID       the Kafka broker; default: the java process running\n"
    "                         kafka.Kafka that order-service is connected to\n"
    "                         PostgreSQL: every process named postgres*; backends are\n"
    "                         named by the daemon at the other end of their connection,\n"
    "                         backends of other clients are listed but not counted\n"
    "\n"
    "Output:\n"
    "  --json FILE            all results as JSON\n"
    "  --svg FILE             latency by percentile as an SVG picture\n"
    "  --quiet                no progress line on stderr (one a second otherwise)\n"
    "  --requests             also count, per settled order, the Kafka requests of\n"
    "                         each daemon's clients (their /metrics, from librdkafka\n"
    "                         statistics), their PostgreSQL round trips, and the\n"
    "                         commits and WAL flushes of the cluster (pg_stat_database,\n"
    "                         pg_stat_wal); adds 27 s of quiet around the run for the\n"
    "                         counters to be published, and the idle rates before it\n"
    "  --help                 this text\n"
    "  --version              print the version\n"
    "\n"
    "POST latency is the time from the intended send to the 202; POST->settled is\n"
    "order-service's settled_at (wall clock, same host) minus the intended send time.\n"
    "Lost: answered 202 but missing from the database or not settled in time.\n"
    "Duplicated: an order of the run's customers that no 202 named, or an order id\n"
    "answered twice.\n"
    "\n"
    "Exit status: 0 all orders accepted and settled, nothing lost or duplicated; 1 a\n"
    "POST failed, an order was lost or duplicated, or the run was interrupted; 2 usage\n"
    "error; 3 set-up failed (a service or the database unreachable).\n";

void ob_signals_install(void)
{
    tl_signals_install(&ob_stop, true);
}

void ob_err(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    tl_vmsg("orders-bench", "", fmt, ap);
    va_end(ap);
}

static int usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    tl_vmsg("orders-bench", " (see --help)", fmt, ap);
    va_end(ap);
    return OB_EXIT_USAGE;
}

static int parse_double(const char *s, double min, double max, double *ret)
{
    char *end;
    double v;

    if (!s || !*s || isspace((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
        return -EINVAL;
    *ret = v;
    return 0;
}

static int parse_int(const char *s, int min, int max, int *ret)
{
    int64_t v;

    if (tl_parse_i64(s, min, max, &v) < 0)
        return -EINVAL;
    *ret = (int)v;
    return 0;
}

/* Headers the tool writes itself; a second copy would make the request invalid. */
static const char *const own_headers[] = {"host", "content-length", "content-type", "connection",
                                          "transfer-encoding"};

/* "Name: value" with an HTTP token as name and no control characters. */
static int check_header(const char *h)
{
    const char *colon = strchr(h, ':');
    size_t n, i;

    if (!colon || colon == h || colon - h > 64)
        return usage("--header must look like 'Name: value'");
    n = (size_t)(colon - h);
    for (i = 0; i < n; i++)
        if (!isalnum((unsigned char)h[i]) && !strchr("!#$%&'*+-.^_`|~", h[i]))
            return usage("--header name \"%.*s\" is not an HTTP token", (int)n, h);
    for (i = n; h[i]; i++)
        if ((unsigned char)h[i] < 0x20 && h[i] != '\t')
            return usage("--header value must not contain control characters");
    for (i = 0; i < sizeof(own_headers) / sizeof(own_headers[0]); i++)
        if (strlen(own_headers[i]) == n && strncasecmp(h, own_headers[i], n) == 0)
            return usage("--header %.*s is set by orders-bench itself", (int)n, h);
    return -1;
}

static const char *const daemon_names[] = {"order-service", "payment-service", "inventory-service"};

/* "NAME=PID,..." or "PID,..." (names then in the order of daemon_names). */
static int parse_pids(ob_opts *o, const char *arg)
{
    const char *item = arg;

    o->npids = 0;
    for (;;) {
        const char *comma = strchr(item, ',');
        size_t len = comma ? (size_t)(comma - item) : strlen(item);
        const char *eq = memchr(item, '=', len);
        ob_pid_arg *p = &o->pids[o->npids];
        char num[16];
        size_t nlen = eq ? (size_t)(eq - item) : 0, vlen = eq ? len - nlen - 1 : len;

        if (o->npids == OB_MAX_PIDS)
            return usage("--pids takes at most %d pids", OB_MAX_PIDS);
        if ((eq && (nlen == 0 || nlen >= sizeof(p->name))) || vlen == 0 || vlen >= sizeof(num))
            return usage("--pids must look like NAME=PID,... or PID,...");
        memcpy(num, eq ? eq + 1 : item, vlen);
        num[vlen] = '\0';
        if (parse_int(num, 1, INT_MAX, &p->pid) < 0)
            return usage("--pids must look like NAME=PID,... or PID,...");
        if (eq)
            snprintf(p->name, sizeof(p->name), "%.*s", (int)nlen, item);
        else
            snprintf(p->name, sizeof(p->name), "%s",
                     o->npids < 3 ? daemon_names[o->npids] : "daemon");
        o->npids++;
        if (!comma)
            return -1;
        item = comma + 1;
    }
}

enum {
    OPT_URL = 0x100,
    OPT_PAYMENT_URL,
    OPT_INVENTORY_URL,
    OPT_ORDERS_DB,
    OPT_ORDERS,
    OPT_RATE,
    OPT_CONNECTIONS,
    OPT_CUSTOMERS,
    OPT_SKUS,
    OPT_QUANTITY,
    OPT_AMOUNT,
    OPT_FUNDS,
    OPT_TIMEOUT,
    OPT_REQ_TIMEOUT,
    OPT_HEADER,
    OPT_TOKEN,
    OPT_ADMIN_TOKEN,
    OPT_PIDS,
    OPT_BROKER_PID,
    OPT_JSON,
    OPT_SVG,
    OPT_QUIET,
    OPT_VERSION,
    OPT_CACERT,
    OPT_INSECURE,
    OPT_REQUESTS,
};

static const struct option longopts[] = {
    {"url", required_argument, NULL, OPT_URL},
    {"payment-url", required_argument, NULL, OPT_PAYMENT_URL},
    {"inventory-url", required_argument, NULL, OPT_INVENTORY_URL},
    {"orders-db", required_argument, NULL, OPT_ORDERS_DB},
    {"orders", required_argument, NULL, OPT_ORDERS},
    {"rate", required_argument, NULL, OPT_RATE},
    {"connections", required_argument, NULL, OPT_CONNECTIONS},
    {"customers", required_argument, NULL, OPT_CUSTOMERS},
    {"skus", required_argument, NULL, OPT_SKUS},
    {"quantity", required_argument, NULL, OPT_QUANTITY},
    {"amount", required_argument, NULL, OPT_AMOUNT},
    {"funds-factor", required_argument, NULL, OPT_FUNDS},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"request-timeout", required_argument, NULL, OPT_REQ_TIMEOUT},
    {"header", required_argument, NULL, OPT_HEADER},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {"insecure", no_argument, NULL, OPT_INSECURE},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"admin-token", required_argument, NULL, OPT_ADMIN_TOKEN},
    {"pids", required_argument, NULL, OPT_PIDS},
    {"broker-pid", required_argument, NULL, OPT_BROKER_PID},
    {"json", required_argument, NULL, OPT_JSON},
    {"svg", required_argument, NULL, OPT_SVG},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"requests", no_argument, NULL, OPT_REQUESTS},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

static void defaults(ob_opts *o)
{
    const char *db = getenv("ORDERS_DATABASE_URL");

    memset(o, 0, sizeof(*o));
    o->url = "http://127.0.0.1:8080";
    o->payment_url = "http://127.0.0.1:8081";
    o->inventory_url = "http://127.0.0.1:8082";
    o->orders_db = db && *db ? db : "dbname=orders";
    o->orders = 2000;
    o->connections = 16;
    o->customers = 20;
    o->skus = 10;
    o->quantity = 1;
    o->amount = 100;
    o->funds_factor = 1.0;
    o->timeout_s = 120;
    o->request_timeout_s = 30;
    o->token = getenv("ORDERS_TOKEN");
    o->admin_token = getenv("ADMIN_TOKEN");
}

/* A bearer token: RFC 6750's b64token characters only (it goes into a header). */
static bool token_ok(const char *t)
{
    if (!t || !*t || strlen(t) > 512)
        return false;
    for (; *t; t++)
        if (!isalnum((unsigned char)*t) && !strchr("-._~+/=", *t))
            return false;
    return true;
}

static int nonempty(const char **dst, const char *arg, const char *name)
{
    if (!*arg)
        return usage("%s must not be empty", name);
    *dst = arg;
    return -1;
}

/* The numeric options; returns -1 to go on, an exit code to stop, 0 if opt is not one. */
static int apply_number(ob_opts *o, int opt, const char *arg)
{
    switch (opt) {
    case OPT_ORDERS:
        return tl_parse_i64(arg, 1, 1000000, &o->orders) < 0
                   ? usage("--orders must be a number between 1 and 1000000")
                   : -1;
    case OPT_RATE:
        return parse_double(arg, 0, 1e6, &o->rate) < 0
                   ? usage("--rate must be a number of orders per second between 0 and 1000000")
                   : -1;
    case OPT_CONNECTIONS:
        return parse_int(arg, 1, 4096, &o->connections) < 0
                   ? usage("--connections must be a number between 1 and 4096")
                   : -1;
    case OPT_CUSTOMERS:
        return parse_int(arg, 1, 100000, &o->customers) < 0
                   ? usage("--customers must be a number between 1 and 100000")
                   : -1;
    case OPT_SKUS:
        return parse_int(arg, 1, 100000, &o->skus) < 0
                   ? usage("--skus must be a number between 1 and 100000")
                   : -1;
    case OPT_QUANTITY:
        return parse_int(arg, 1, 1000000, &o->quantity) < 0
                   ? usage("--quantity must be a number between 1 and 1000000")
                   : -1;
    case OPT_AMOUNT:
        return tl_parse_i64(arg, 0, 1000000000, &o->amount) < 0
                   ? usage("--amount must be a number of cents between 0 and 1000000000")
                   : -1;
    case OPT_FUNDS:
        return parse_double(arg, 1e-6, 1000, &o->funds_factor) < 0
                   ? usage("--funds-factor must be a number above 0 and at most 1000")
                   : -1;
    case OPT_TIMEOUT:
        return parse_double(arg, 1, 86400, &o->timeout_s) < 0
                   ? usage("--timeout must be a number of seconds between 1 and 86400")
                   : -1;
    case OPT_REQ_TIMEOUT:
        return parse_double(arg, 0.1, 3600, &o->request_timeout_s) < 0
                   ? usage("--request-timeout must be a number of seconds between 0.1 and 3600")
                   : -1;
    default:
        return 0;
    }
}

/* One option; returns -1 to go on, else the exit code to stop with. */
static int apply(ob_opts *o, int opt, const char *arg)
{
    int r;

    if ((r = apply_number(o, opt, arg)) != 0)
        return r;
    switch (opt) {
    case OPT_URL:
        return nonempty(&o->url, arg, "--url");
    case OPT_PAYMENT_URL:
        return nonempty(&o->payment_url, arg, "--payment-url");
    case OPT_INVENTORY_URL:
        return nonempty(&o->inventory_url, arg, "--inventory-url");
    case OPT_ORDERS_DB:
        return nonempty(&o->orders_db, arg, "--orders-db");
    case OPT_CACERT:
        return nonempty(&o->cacert, arg, "--cacert");
    case OPT_INSECURE:
        o->insecure = true;
        return -1;
    case OPT_HEADER:
        if (o->nheaders == OB_MAX_HEADERS)
            return usage("--header can be given at most %d times", OB_MAX_HEADERS);
        if ((r = check_header(arg)) >= 0)
            return r;
        o->headers[o->nheaders++] = arg;
        return -1;
    case OPT_TOKEN:
        o->token = arg;
        return -1;
    case OPT_ADMIN_TOKEN:
        o->admin_token = arg;
        return -1;
    case OPT_PIDS:
        return parse_pids(o, arg);
    case OPT_BROKER_PID:
        return parse_int(arg, 1, INT_MAX, &o->broker_pid) < 0
                   ? usage("--broker-pid must be a process id")
                   : -1;
    case OPT_JSON:
        return nonempty(&o->json_path, arg, "--json");
    case OPT_SVG:
        return nonempty(&o->svg_path, arg, "--svg");
    case OPT_QUIET:
        o->quiet = true;
        return -1;
    case OPT_REQUESTS:
        o->requests = true;
        return -1;
    case 'h':
        fputs(usage_text, stdout);
        fputs(usage_text2, stdout);
        return OB_EXIT_OK;
    case OPT_VERSION:
        printf("orders-bench %s\n", ORDERS_VERSION);
        return OB_EXIT_OK;
    default:
        return usage("unknown option");
    }
}

int ob_opts_parse(ob_opts *o, int argc, char **argv)
{
    int opt, r;

    defaults(o);
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (opt == '?')
            return optopt ? usage("unknown option -%c", optopt)
                          : usage("unknown option %s", argv[optind - 1]);
        if (opt == ':')
            return usage("option %s needs a value", argv[optind - 1]);
        if ((r = apply(o, opt, optarg)) >= 0)
            return r;
    }
    if (optind < argc)
        return usage("unexpected argument \"%s\"", argv[optind]);
    if (o->token && !*o->token)
        o->token = NULL;
    if (o->admin_token && !*o->admin_token)
        o->admin_token = NULL;
    if (o->token && !token_ok(o->token))
        return usage("--token (or $ORDERS_TOKEN) is not a bearer token (letters, digits, -._~+/=)");
    if (o->admin_token && !token_ok(o->admin_token))
        return usage("--admin-token (or $ADMIN_TOKEN) is not a bearer token (letters, digits, "
                     "-._~+/=)");
    return -1;
}

int64_t ob_mono_ns(void)
{
    return tl_clock_ns(CLOCK_MONOTONIC);
}

int64_t ob_real_ns(void)
{
    return tl_clock_ns(CLOCK_REALTIME);
}

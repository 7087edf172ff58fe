/*
 * oc_token.c - "orderctl token new", "token hash" and "token init": bearer
 * tokens of the HTTP API and their lines of the daemons' token file
 * (HTTP_TOKENS_FILE). Nothing here talks to a broker.
 */
#include "cm_auth.h"
#include "oc_cmd.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char new_usage[] =
    "Usage: orderctl token new --name NAME --scope SCOPE[,SCOPE...]\n"
    "\n"
    "Makes a new random bearer token (\"ot_\" + 32 bytes from getrandom, base64url)\n"
    "and prints two lines on stdout: the token, shown this once (store it now; the\n"
    "daemons keep only its SHA-256), and the line to append to the token file\n"
    "(HTTP_TOKENS_FILE):\n"
    "    <sha256-hex> NAME SCOPE[,SCOPE...]\n"
    "Then reload the daemons (systemctl reload order-service ..., or SIGHUP).\n"
    "To revoke a token, delete its line and reload.\n"
    "\n"
    "Options:\n"
    "  --name NAME    who holds the token, written in the audit log lines\n"
    "                 (1 to 63 of A-Z a-z 0-9 . _ -)\n"
    "  --scope LIST   comma-separated scopes: orders:write (POST /orders),\n"
    "                 orders:read (GET /orders/{id}), payments:read,\n"
    "                 payments:admin (PUT /accounts/{id}), inventory:read,\n"
    "                 inventory:admin (PUT /stock/{sku}), metrics:read (/metrics\n"
    "                 with METRICS_TOKEN_SCOPE=metrics:read)\n"
    "\n"
    "Exit status: 0 ok, 2 usage error, 3 no random bytes.\n";

static const char hash_usage[] =
    "Usage: orderctl token hash [--name NAME --scope SCOPE[,SCOPE...]]\n"
    "\n"
    "Reads one token from stdin (one line) and prints its SHA-256 as the token\n"
    "file wants it; with --name and --scope, the whole token-file line. For\n"
    "scripts that bring their own tokens and for checking which line is whose.\n"
    "\n"
    "Exit status: 0 ok, 2 usage error or no token on stdin.\n";

static const char init_usage[] =
    "Usage: orderctl token init [--file FILE] [--client NAME=SCOPE[,SCOPE...]]... [--force]\n"
    "\n"
    "Sets a host's HTTP authentication up in one step: makes a new random token per\n"
    "client, writes the token file FILE (default /etc/orders/tokens: one\n"
    "\"<sha256-hex> NAME SCOPES\" line per client, no plaintext token; mode 0644, as\n"
    "the daemons' dynamic users must read it) and prints the tokens on stdout, once,\n"
    "as NAME_TOKEN=<token> lines (NAME upper-cased, '-' and '.' as '_'): hand them to\n"
    "the clients now. Without --client: orders=orders:write,orders:read (ORDERS_TOKEN)\n"
    "and admin=<every scope> (ADMIN_TOKEN), the tokens of the run command. Then\n"
    "point HTTP_TOKENS_FILE at FILE (the packaged environment files do) and reload\n"
    "the daemons. Add tokens later with \"orderctl token new\".\n"
    "\n"
    "Options:\n"
    "  --file FILE                 the token file (default /etc/orders/tokens)\n"
    "  --client NAME=SCOPE[,...]   a client and its scopes (repeatable, up to 32)\n"
    "  --force                     replace an existing FILE (its tokens stop working at\n"
    "                              the daemons' next reload)\n"
    "\n"
    "Exit status: 0 ok, 1 FILE exists (without --force), 2 usage error, 3 no random\n"
    "bytes or FILE not written.\n";

static const char *const known_scopes[] = {
    "orders:write",   "orders:read",     "payments:read", "payments:admin",
    "inventory:read", "inventory:admin", "metrics:read",
};

static int check_scopes(const char *list)
{
    const char *s = list;

    if (!*s)
        return oc_usage("--scope needs at least one scope");
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        bool known = false;
        for (size_t i = 0; i < sizeof(known_scopes) / sizeof(known_scopes[0]); i++)
            known =
                known || (strlen(known_scopes[i]) == len && strncmp(known_scopes[i], s, len) == 0);
        if (!known)
            return oc_usage("unknown scope \"%.*s\" (known: orders:write orders:read payments:read "
                            "payments:admin inventory:read inventory:admin metrics:read)",
                            (int)(len < 64 ? len : 64), s);
        if (!comma)
            return 0;
        s = comma + 1;
    }
}

/* Parses --name and --scope; returns -1 to go on, else an exit status. */
static int parse(int argc, char **argv, const char *usage, const char **name, const char **scope)
{
    static const struct option longopts[] = {
        {"name", required_argument, NULL, 'n'},
        {"scope", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (opt == 'h') {
            fputs(usage, stdout);
            return OC_EXIT_OK;
        } else if (opt == 'n') {
            *name = optarg;
        } else if (opt == 's') {
            *scope = optarg;
        } else {
            return oc_usage("unknown option");
        }
    }
    if (optind < argc)
        return oc_usage("unexpected argument \"%s\"", argv[optind]);
    if (*name && !cm_auth_name_valid(*name, strlen(*name)))
        return oc_usage("--name must be 1 to %d of A-Z a-z 0-9 . _ -", CM_AUTH_NAME_MAX - 1);
    if (*scope && check_scopes(*scope) != 0)
        return OC_EXIT_USAGE;
    return -1;
}

int oc_cmd_token_new(oc_opts *o, int argc, char **argv)
{
    const char *name = NULL, *scope = NULL;
    char tok[CM_AUTH_TOKEN_LEN], hash[65];
    int r = parse(argc, argv, new_usage, &name, &scope);
    (void)o;

    if (r >= 0)
        return r;
    if (!name || !scope)
        return oc_usage("token new needs --name and --scope");
    if (cm_auth_token_new(tok) < 0 || cm_auth_hash_hex(tok, strlen(tok), hash) < 0) {
        oc_err("could not make a random token");
        return OC_EXIT_INFRA;
    }
    printf("%s\n%s %s %s\n", tok, hash, name, scope);
    fflush(stdout);
    explicit_bzero(tok, sizeof(tok));
    fprintf(stderr,
            "orderctl: line 1 is the token, shown once: give it to %s now. Append line 2 "
            "to the token file (HTTP_TOKENS_FILE) and reload the daemons.\n",
            name);
    return OC_EXIT_OK;
}

int oc_cmd_token_hash(oc_opts *o, int argc, char **argv)
{
    const char *name = NULL, *scope = NULL;
    char line[1024], hash[65];
    size_t len;
    int r = parse(argc, argv, hash_usage, &name, &scope);
    (void)o;

    if (r >= 0)
        return r;
    if (!name != !scope)
        return oc_usage("--name and --scope go together");
    if (!fgets(line, sizeof(line), stdin))
        return oc_usage("no token on stdin");
    len = strcspn(line, "\r\n");
    line[len] = '\0';
    if (len == 0)
        return oc_usage("no token on stdin");
    r = cm_auth_hash_hex(line, len, hash);
    explicit_bzero(line, sizeof(line));
    if (r < 0) {
        oc_err("could not hash the token");
        return OC_EXIT_INFRA;
    }
    if (name)
        printf("%s %s %s\n", hash, name, scope);
    else
        printf("%s\n", hash);
    return OC_EXIT_OK;
}

#define INIT_CLIENTS_MAX 32

typedef struct {
    char name[CM_AUTH_NAME_MAX];
    const char *scopes;
} init_client;

/* Parses "NAME=SCOPE[,...]" into c; returns -1 to go on, else an exit status. */
static int parse_client(const char *arg, init_client *c)
{
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : 0;

    if (!eq || !cm_auth_name_valid(arg, n) || n >= sizeof(c->name))
        return oc_usage("--client wants NAME=SCOPE[,SCOPE...] with a NAME of 1 to %d of "
                        "A-Z a-z 0-9 . _ -",
                        CM_AUTH_NAME_MAX - 1);
    memcpy(c->name, arg, n);
    c->name[n] = '\0';
    c->scopes = eq + 1;
    return check_scopes(c->scopes) == 0 ? -1 : OC_EXIT_USAGE;
}

int oc_cmd_token_init(oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"file", required_argument, NULL, 'f'},
        {"client", required_argument, NULL, 'c'},
        {"force", no_argument, NULL, 'F'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static const init_client defaults[] = {
        {"orders", "orders:write,orders:read"},
        {"admin", "orders:write,orders:read,payments:read,payments:admin,inventory:read,"
                  "inventory:admin,metrics:read"},
    };
    init_client clients[INIT_CLIENTS_MAX];
    char toks[INIT_CLIENTS_MAX][CM_AUTH_TOKEN_LEN], hash[65];
    char file_text[INIT_CLIENTS_MAX * 256 + 128];
    const char *file = "/etc/orders/tokens";
    size_t n = 0, used;
    bool force = false;
    int opt, r;
    (void)o;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (opt == 'h') {
            fputs(init_usage, stdout);
            return OC_EXIT_OK;
        } else if (opt == 'f') {
            file = optarg;
        } else if (opt == 'F') {
            force = true;
        } else if (opt == 'c') {
            if (n == INIT_CLIENTS_MAX)
                return oc_usage("at most %d --client options", INIT_CLIENTS_MAX);
            if ((r = parse_client(optarg, &clients[n++])) >= 0)
                return r;
        } else {
            return oc_usage("unknown option");
        }
    }
    if (optind < argc)
        return oc_usage("unexpected argument \"%s\"", argv[optind]);
    if (n == 0) {
        memcpy(clients, defaults, sizeof(defaults));
        n = sizeof(defaults) / sizeof(defaults[0]);
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(clients[i].name, clients[j].name) == 0)
                return oc_usage("client \"%s\" given twice", clients[i].name);
    if (!force && access(file, F_OK) == 0) {
        oc_err("%s exists: --force replaces it (its tokens stop working), \"orderctl token "
               "new\" adds one",
               file);
        return OC_EXIT_FINDING;
    }

    used = (size_t)snprintf(file_text, sizeof(file_text),
                            "# HTTP bearer tokens (orderctl token init): <sha256-hex> <name> "
                            "<scope>[,...]\n");
    for (size_t i = 0; i < n; i++) {
        if (cm_auth_token_new(toks[i]) < 0 ||
            cm_auth_hash_hex(toks[i], strlen(toks[i]), hash) < 0) {
            oc_err("could not make a random token");
            explicit_bzero(toks, sizeof(toks));
            return OC_EXIT_INFRA;
        }
        used += (size_t)snprintf(file_text + used, sizeof(file_text) - used, "%s %s %s\n", hash,
                                 clients[i].name, clients[i].scopes);
    }
    if (oc_write_file(file, file_text, 0644, false) < 0) {
        explicit_bzero(toks, sizeof(toks));
        return OC_EXIT_INFRA;
    }
    for (size_t i = 0; i < n; i++) {
        for (const char *c = clients[i].name; *c; c++)
            putchar(*c == '-' || *c == '.' ? '_' : toupper((unsigned char)*c));
        printf("_TOKEN=%s\n", toks[i]);
    }
    fflush(stdout);
    explicit_bzero(toks, sizeof(toks));
    fprintf(stderr,
            "orderctl: wrote %zu token(s) to %s; the tokens above are shown once. Reload the "
            "daemons (systemctl reload order-service payment-service inventory-service).\n",
            n, file);
    return OC_EXIT_OK;
}

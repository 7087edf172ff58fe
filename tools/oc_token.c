/*
 * oc_token.c - "orderctl token new" and "orderctl token hash": bearer tokens
 * of the HTTP API and their lines of the daemons' token file (HTTP_TOKENS_FILE).
 * Nothing here talks to a broker.
 */
#include "cm_auth.h"
#include "oc_cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/*
 * oc_api.h - reading the daemons' HTTP APIs (order-service, payment-service,
 * inventory-service) with a bearer token, for the commands that tell an
 * order's story (oc_story.c, oc_stuck.c).
 *
 * One request per call over common/cm_httpc (blocking, one deadline: the
 * common --timeout). Base URLs come from --orders-url / --payments-url /
 * --inventory-url, else ORDERS_URL / PAYMENTS_URL / INVENTORY_URL, else the
 * dev stack's http://127.0.0.1:8080, :8081, :8082. The token comes from
 * --token-file FILE (its first line) or ORDERCTL_TOKEN; without one no
 * Authorization header is sent (a daemon with HTTP_AUTH=none). --cacert FILE
 * verifies https against that CA instead of the system store.
 */
#pragma once

#include "cm_httpc.h"
#include "oc_cli.h"

#include <jansson.h>

typedef enum { OC_SVC_ORDERS, OC_SVC_PAYMENTS, OC_SVC_INVENTORY, OC_SVC_COUNT } oc_svc;

typedef struct {
    const char *url[OC_SVC_COUNT]; /* as given */
    cm_httpc_url base[OC_SVC_COUNT];
    const char *token_file;
    const char *cacert;
    char token[512]; /* "" = none */
    cm_httpc_opts http;
} oc_api;

/* An answer: status 0 when none came (err says why: refused, timed out,
 * TLS), else the HTTP status with the body parsed when it is JSON (NULL
 * otherwise) and, for a problem+json, its detail in err. */
typedef struct {
    int status;
    json_t *body;
    char err[256];
} oc_answer;

/* The daemon's name ("order-service") of svc. */
const char *oc_api_name(oc_svc svc);

/* Fills a with the defaults (environment included). */
void oc_api_default(oc_api *a);

/* The getopt_long entries and help text of the options above; a command
 * hands an option whose value is >= OC_API_OPT_FIRST to oc_api_option(). */
#define OC_API_OPT_FIRST 0x200
#define OC_API_LONGOPTS                                                                            \
    {"orders-url", required_argument, NULL, OC_API_OPT_FIRST},                                     \
        {"payments-url", required_argument, NULL, OC_API_OPT_FIRST + 1},                           \
        {"inventory-url", required_argument, NULL, OC_API_OPT_FIRST + 2},                          \
        {"token-file", required_argument, NULL, OC_API_OPT_FIRST + 3},                             \
    {                                                                                              \
        "cacert", required_argument, NULL, OC_API_OPT_FIRST + 4                                    \
    }
#define OC_API_HELP                                                                                \
    "HTTP options:\n"                                                                              \
    "  --orders-url URL     order-service (default $ORDERS_URL, else http://127.0.0.1:8080)\n"     \
    "  --payments-url URL   payment-service (default $PAYMENTS_URL, else\n"                        \
    "                       http://127.0.0.1:8081)\n"                                              \
    "  --inventory-url URL  inventory-service (default $INVENTORY_URL, else\n"                     \
    "                       http://127.0.0.1:8082)\n"                                              \
    "  --token-file FILE    bearer token (first line of FILE; default $ORDERCTL_TOKEN), with\n"    \
    "                       the scopes orders:read, payments:read, inventory:read\n"               \
    "  --cacert FILE        CA certificate(s) (PEM) to verify https URLs with\n"

/* Applies one of the options above. Returns 1 if opt was one, 0 if not. */
int oc_api_option(oc_api *a, int opt, const char *arg);

/* Parses the URLs and reads the token (after option parsing). Returns 0 or
 * OC_EXIT_USAGE (reported: a bad URL, an unreadable or empty token file). */
int oc_api_prepare(oc_api *a, int timeout_ms);

/* GET path ("/orders/x", already escaped) from svc into *ret (free with
 * oc_answer_free). Never fails otherwise: an unreachable service is
 * ret->status == 0. */
void oc_api_get(const oc_api *a, oc_svc svc, const char *path, oc_answer *ret);
void oc_answer_free(oc_answer *ans);

/* Appends s to out percent-encoded as one path segment (everything but
 * RFC 3986's unreserved characters). Returns 0 or -ENAMETOOLONG. */
int oc_api_escape(const char *s, char *out, size_t outlen);

/*
 * oc_api.c - see oc_api.h.
 */
#include "oc_api.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *const names[OC_SVC_COUNT] = {"order-service", "payment-service",
                                                "inventory-service"};
static const char *const envs[OC_SVC_COUNT] = {"ORDERS_URL", "PAYMENTS_URL", "INVENTORY_URL"};
static const char *const defaults[OC_SVC_COUNT] = {"http://127.0.0.1:8080", "http://127.0.0.1:8081",
                                                   "http://127.0.0.1:8082"};

const char *oc_api_name(oc_svc svc)
{
    return names[svc];
}

void oc_api_default(oc_api *a)
{
    memset(a, 0, sizeof(*a));
    for (int i = 0; i < OC_SVC_COUNT; i++) {
        const char *env = getenv(envs[i]);
        a->url[i] = env && *env ? env : defaults[i];
    }
}

int oc_api_option(oc_api *a, int opt, const char *arg)
{
    if (opt >= OC_API_OPT_FIRST && opt < OC_API_OPT_FIRST + OC_SVC_COUNT)
        a->url[opt - OC_API_OPT_FIRST] = arg;
    else if (opt == OC_API_OPT_FIRST + 3)
        a->token_file = arg;
    else if (opt == OC_API_OPT_FIRST + 4)
        a->cacert = arg;
    else
        return 0;
    return 1;
}

/* The first line of path, without surrounding blanks, into a->token. */
static int read_token(oc_api *a, const char *path)
{
    FILE *f = fopen(path, "re");
    struct stat st;
    char *s, *e;

    if (!f) {
        oc_err("cannot read --token-file %s: %s", path, strerror(errno));
        return OC_EXIT_USAGE;
    }
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0077))
        oc_err("warning: --token-file %s is readable by others (chmod 600)", path);
    s = fgets(a->token, sizeof(a->token), f);
    fclose(f);
    if (!s) {
        oc_err("--token-file %s is empty", path);
        return OC_EXIT_USAGE;
    }
    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    memmove(a->token, s, strlen(s) + 1);
    if (!a->token[0]) {
        oc_err("--token-file %s holds no token on its first line", path);
        return OC_EXIT_USAGE;
    }
    return 0;
}

int oc_api_prepare(oc_api *a, int timeout_ms)
{
    const char *env = getenv("ORDERCTL_TOKEN");
    char err[256];

    for (int i = 0; i < OC_SVC_COUNT; i++) {
        if (cm_httpc_parse_url(a->url[i], &a->base[i], err, sizeof(err)) < 0) {
            oc_err("bad URL for %s \"%s\": %s", names[i], a->url[i], err);
            return OC_EXIT_USAGE;
        }
    }
    if (a->token_file) {
        int r = read_token(a, a->token_file);
        if (r)
            return r;
    } else if (env && *env) {
        snprintf(a->token, sizeof(a->token), "%s", env);
    }
    a->http.ca_file = a->cacert;
    a->http.timeout_ms = timeout_ms;
    return 0;
}

void oc_api_get(const oc_api *a, oc_svc svc, const char *path, oc_answer *ret)
{
    char auth[600];
    const char *headers[3] = {"Accept: application/json", NULL, NULL};
    cm_httpc_response resp = {0};
    json_t *detail;

    memset(ret, 0, sizeof(*ret));
    if (a->token[0]) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", a->token);
        headers[1] = auth;
    }
    if (cm_httpc_request(&a->base[svc], &a->http, "GET", path, headers, NULL, 0, &resp, ret->err,
                         sizeof(ret->err)) < 0) {
        cm_httpc_response_free(&resp);
        return;
    }
    ret->status = resp.status;
    if (strncmp(resp.content_type, "application/json", 16) == 0 ||
        strncmp(resp.content_type, "application/problem+json", 24) == 0)
        ret->body = json_loadb(resp.body, resp.len, 0, NULL);
    detail = json_object_get(ret->body, "detail");
    if (resp.status >= 400)
        snprintf(ret->err, sizeof(ret->err), "HTTP %d%s%s", resp.status,
                 json_is_string(detail) ? ": " : "",
                 json_is_string(detail) ? json_string_value(detail) : "");
    cm_httpc_response_free(&resp);
}

void oc_answer_free(oc_answer *ans)
{
    json_decref(ans->body);
    ans->body = NULL;
}

int oc_api_escape(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(out);

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool plain = isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';

        if (n + (plain ? 1 : 3) >= outlen)
            return -ENAMETOOLONG;
        if (plain) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = '\0';
    return 0;
}

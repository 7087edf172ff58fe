/*
 * cm_httpc.h - a small blocking HTTP/1.1 client: one request per connection,
 * plain HTTP or HTTPS (OpenSSL, the peer verified against the system's CA
 * store or a given CA file), every step bounded by one deadline.
 *
 * It serves orderctl (reading the daemons' APIs) and the span sender of the
 * tracer (POST to a Zipkin collector): neither needs keep-alive or
 * pipelining, both need a clear error when the other side is down or slow.
 */
#ifndef CM_HTTPC_H
#define CM_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

/* A parsed base URL: http[s]://host[:port][/prefix]. IPv6 hosts in []. */
typedef struct {
    bool tls;
    char host[256];
    char port[8];
    char prefix[256]; /* path prefix without a trailing '/', may be "" */
} cm_httpc_url;

typedef struct {
    int status;             /* HTTP status code */
    char content_type[128]; /* "" when absent */
    char *body;             /* NUL-terminated (body[len] == '\0'), malloc'd */
    size_t len;
} cm_httpc_response;

typedef struct {
    const char *ca_file; /* PEM CA bundle for https; NULL: the system store */
    bool insecure;       /* https without verifying the peer (tests only) */
    int timeout_ms;      /* whole request: connect, send, receive; <= 0: 10 s */
    size_t max_body;     /* a longer response body is an error; 0: 8 MiB */
} cm_httpc_opts;

/* Parses url into *out. Returns 0, or -EINVAL with a message in err. */
int cm_httpc_parse_url(const char *url, cm_httpc_url *out, char *err, size_t errlen);

/*
 * Sends one request to base->prefix + path ("/orders/1", must start with
 * '/') and reads the whole answer into *resp. headers is NULL or a
 * NULL-terminated list of "Name: value" lines (Host, Content-Length,
 * Connection are added). body may be NULL (no body).
 *
 * Returns 0 when an answer arrived (any status: check resp->status), or a
 * negative errno with a message in err ("connect 127.0.0.1:8080: Connection
 * refused", "timed out after 10000 ms", "TLS: certificate verify failed"):
 * -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH, -EPROTO (a malformed answer or a
 * TLS failure), -EMSGSIZE (body larger than max_body), -ENOMEM.
 * On failure *resp is left empty (safe to free).
 */
int cm_httpc_request(const cm_httpc_url *base, const cm_httpc_opts *opts, const char *method,
                     const char *path, const char *const *headers, const char *body, size_t bodylen,
                     cm_httpc_response *resp, char *err, size_t errlen);

void cm_httpc_response_free(cm_httpc_response *resp);

#endif

/*
 * ob_http.h - a small non-blocking HTTP/1.1 client: one keep-alive
 * connection per ob_conn, one request at a time, driven by the caller's
 * epoll loop (or by ob_http_simple, which drives it with poll).
 *
 * https:// URLs speak TLS (OpenSSL): the handshake runs inside the same
 * state machine (OB_CONN_HANDSHAKE), once per connection, so keep-alive
 * connections pay it once; the peer is verified against the system's CA
 * store or --cacert unless --insecure.
 *
 * Responses: a status line, headers and a Content-Length body (chunked
 * bodies are refused; 204 and 304 have none). A request on a reused
 * connection that the server had closed while idle (EOF, reset or broken
 * pipe before any byte of the response) is sent once more on a new
 * connection; every other failure is the caller's to count.
 *
 * Ownership: the caller owns the ob_conn and the ob_url it points to (the
 * url must outlive the connection); ob_conn_free closes and frees what the
 * connection holds.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "http[s]://host[:port][/prefix]", resolved once. */
typedef struct {
    bool tls;           /* https:// */
    void *ssl_ctx;      /* SSL_CTX of an https URL, made by ob_url_tls */
    char host[256];     /* as written, brackets of an IPv6 literal removed */
    char hostport[272]; /* the Host header: host[:port] as written */
    char prefix[256];   /* path prefix without a trailing slash, "" for none */
    int port;           /* 80 (443 for https) if not given */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    bool loopback; /* addr is 127.0.0.0/8 or ::1 */
} ob_url;

/* Parses and resolves s. Returns 0, or -EINVAL with a message in err. */
int ob_url_parse(const char *s, ob_url *ret, char *err, size_t errlen);

/* For an https URL: the TLS context its connections share, verifying the
 * peer against ca_file (PEM) or the system store, or not at all when
 * insecure. Nothing for http. Returns 0, or -EINVAL with a message in err. */
int ob_url_tls(ob_url *u, const char *ca_file, bool insecure, char *err, size_t errlen);

/* Frees what ob_url_tls made. */
void ob_url_free(ob_url *u);

typedef enum {
    OB_CONN_CLOSED,     /* no socket; the next request connects */
    OB_CONN_CONNECTING, /* connect() in progress, request waiting */
    OB_CONN_HANDSHAKE,  /* TLS handshake in progress, request waiting */
    OB_CONN_IDLE,       /* connected, no request */
    OB_CONN_SENDING,    /* request partly written */
    OB_CONN_RECEIVING,  /* request written, response incomplete */
    OB_CONN_DONE,       /* response complete: status, body valid until ob_conn_finish */
} ob_conn_state;

typedef struct {
    int fd;
    void *ssl; /* SSL of an https connection */
    int epfd;  /* the epoll set the socket is added to (edge-triggered), -1 for none */
    ob_conn_state state;
    const ob_url *url;
    char *req; /* the request, kept until its response for a resend */
    size_t reqlen, reqoff, reqcap;
    char *buf; /* response bytes */
    size_t buflen, bufcap;
    size_t headlen;      /* bytes of status line and headers, 0 while incomplete */
    size_t bodylen;      /* Content-Length */
    bool close_after;    /* "Connection: close" or HTTP/1.0 */
    bool retried;        /* this request was already sent a second time */
    unsigned nresp;      /* responses received on the current socket */
    int status;          /* HTTP status of the complete response */
    uint64_t opened;     /* sockets opened so far (all requests) */
    uint64_t handshakes; /* TLS handshakes completed */
    uint64_t resends;    /* requests sent again after a closed keep-alive connection */
    int64_t tag;         /* the caller's: the order in flight */
    int64_t started_ns;  /* the caller's: when the request was started */
    char err[160];       /* why the last call failed */
} ob_conn;

void ob_conn_init(ob_conn *c, const ob_url *url, int epfd);
void ob_conn_free(ob_conn *c);

/* Closes the socket (the state becomes OB_CONN_CLOSED). */
void ob_conn_close(ob_conn *c);

/* Opens the socket and starts connecting, without a request. Returns 0 or a
 * negative errno (message in c->err). */
int ob_conn_connect(ob_conn *c);

/* Starts a request: method and path (the URL's prefix is put in front),
 * extra header lines (each ending in "\r\n", may be ""), a JSON body or NULL.
 * Connects if needed and writes what the socket takes. The connection must be
 * CLOSED or IDLE. Returns 1 if in progress, 0 if already complete (state
 * DONE), or a negative errno (message in c->err; the connection is closed). */
int ob_conn_request(ob_conn *c, const char *method, const char *path, const char *headers,
                    const char *body, size_t bodylen);

/* Advances the connection on readiness (EPOLLIN/EPOLLOUT/EPOLLERR/EPOLLHUP/
 * EPOLLRDHUP bits). Returns 1 while in progress (also while idle), 0 when the
 * response is complete (state DONE), or a negative errno (message in c->err;
 * the connection is closed). An idle connection that the server closes is
 * closed quietly (returns 1). */
int ob_conn_on_event(ob_conn *c, uint32_t events);

/* The body of a complete response. */
const char *ob_conn_body(const ob_conn *c, size_t *ret_len);

/* Ends a complete response: the connection becomes IDLE, or CLOSED if the
 * server asked to close it. */
void ob_conn_finish(ob_conn *c);

/* One blocking request on a new connection, at most timeout_ms. Returns 0 with
 * the status in *ret_status, or a negative errno with a message in err. */
int ob_http_simple(const ob_url *url, const char *method, const char *path, const char *headers,
                   const char *body, int timeout_ms, int *ret_status, char *err, size_t errlen);

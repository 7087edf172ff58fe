/*
 * cm_httpc.c - see cm_httpc.h.
 *
 * One request per connection ("Connection: close"): the answer ends at its
 * Content-Length, at the last chunk, or when the server closes. The socket is
 * non-blocking and every wait is a poll() bounded by the request's deadline,
 * so a peer that accepts and then says nothing costs at most timeout_ms.
 */
#include "cm_httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX (64 * 1024)

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return r;
}

int cm_httpc_parse_url(const char *url, cm_httpc_url *out, char *err, size_t errlen)
{
    const char *p, *host, *host_end, *port = NULL, *port_end = NULL, *path;
    memset(out, 0, sizeof(*out));
    if (!url || !*url)
        return fail(err, errlen, -EINVAL, "empty URL");
    if (strncasecmp(url, "http://", 7) == 0) {
        p = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        p = url + 8;
        out->tls = true;
    } else {
        return fail(err, errlen, -EINVAL, "URL %s: the scheme must be http:// or https://", url);
    }
    path = p + strcspn(p, "/?#");
    if (strpbrk(p, "?#"))
        return fail(err, errlen, -EINVAL, "URL %s: a query or fragment is not allowed", url);
    if (*p == '[') {
        host = p + 1;
        host_end = memchr(host, ']', (size_t)(path - host));
        if (!host_end)
            return fail(err, errlen, -EINVAL, "URL %s: unterminated [IPv6 address]", url);
        if (host_end + 1 < path) {
            if (host_end[1] != ':')
                return fail(err, errlen, -EINVAL, "URL %s: junk after ]", url);
            port = host_end + 2;
            port_end = path;
        }
    } else {
        host = p;
        host_end = memchr(p, ':', (size_t)(path - p));
        if (host_end) {
            port = host_end + 1;
            port_end = path;
        } else {
            host_end = path;
        }
    }
    if (memchr(host, '@', (size_t)(path - host)))
        return fail(err, errlen, -EINVAL, "URL %s: credentials in the URL are not supported", url);
    if (host_end == host || (size_t)(host_end - host) >= sizeof(out->host))
        return fail(err, errlen, -EINVAL, "URL %s: missing or too long host", url);
    memcpy(out->host, host, (size_t)(host_end - host));
    if (port) {
        size_t n = (size_t)(port_end - port);
        char *end;
        long v;
        if (n == 0 || n >= sizeof(out->port))
            return fail(err, errlen, -EINVAL, "URL %s: bad port", url);
        memcpy(out->port, port, n);
        v = strtol(out->port, &end, 10);
        if (*end || v < 1 || v > 65535)
            return fail(err, errlen, -EINVAL, "URL %s: bad port", url);
    } else {
        strcpy(out->port, out->tls ? "443" : "80");
    }
    size_t plen = strlen(path);
    while (plen && path[plen - 1] == '/')
        plen--;
    if (plen >= sizeof(out->prefix))
        return fail(err, errlen, -EINVAL, "URL %s: path too long", url);
    memcpy(out->prefix, path, plen);
    return 0;
}

/* ---- one connection ---- */

typedef struct {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    int64_t deadline_ms;
    int timeout_ms;
    char *err;
    size_t errlen;
} conn;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is readable (events POLLIN) or writable (POLLOUT). */
static int wait_fd(conn *c, short events)
{
    for (;;) {
        int64_t left = c->deadline_ms - now_ms();
        struct pollfd pfd = {.fd = c->fd, .events = events};
        int n;
        if (left <= 0)
            return fail(c->err, c->errlen, -ETIMEDOUT, "timed out after %d ms", c->timeout_ms);
        n = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return fail(c->err, c->errlen, -errno, "poll: %s", strerror(errno));
    }
}

static int tls_error(conn *c, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        return fail(c->err, c->errlen, -EPROTO, "TLS %s: certificate verify failed: %s", what,
                    X509_verify_cert_error_string(vr));
    return fail(c->err, c->errlen, -EPROTO, "TLS %s: %s", what, *buf ? buf : "connection closed");
}

/* Runs one SSL call until it completes or the deadline passes; returns its
 * positive result, 0 for a clean close (reads), or a negative errno. */
static int tls_io(conn *c, const char *what, int (*op)(SSL *, void *, int), void *buf, int len,
                  bool eof_ok)
{
    for (;;) {
        int n, r;
        ERR_clear_error();
        n = op(c->ssl, buf, len);
        if (n > 0)
            return n;
        switch (SSL_get_error(c->ssl, n)) {
        case SSL_ERROR_WANT_READ:
            r = wait_fd(c, POLLIN);
            break;
        case SSL_ERROR_WANT_WRITE:
            r = wait_fd(c, POLLOUT);
            break;
        case SSL_ERROR_ZERO_RETURN:
            return 0;
        case SSL_ERROR_SYSCALL:
            if (ERR_peek_error() == 0 && eof_ok)
                return 0; /* closed without close_notify: the end for Connection: close */
            return tls_error(c, what);
        default:
            return tls_error(c, what);
        }
        if (r < 0)
            return r;
    }
}

static int ssl_read_op(SSL *s, void *b, int n)
{
    return SSL_read(s, b, n);
}
static int ssl_write_op(SSL *s, void *b, int n)
{
    return SSL_write(s, b, n);
}
static int ssl_connect_op(SSL *s, void *b, int n)
{
    (void)b;
    (void)n;
    return SSL_connect(s) == 1 ? 1 : -1;
}

static int conn_open(conn *c, const cm_httpc_url *u, const cm_httpc_opts *o)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    struct addrinfo *res = NULL, *ai;
    int r = -ECONNREFUSED, gai;

    gai = getaddrinfo(u->host, u->port, &hints, &res);
    if (gai != 0)
        return fail(c->err, c->errlen, -EHOSTUNREACH, "resolve %s: %s", u->host, gai_strerror(gai));
    for (ai = res; ai; ai = ai->ai_next) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        c->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            r = fail(c->err, c->errlen, -errno, "socket: %s", strerror(errno));
            continue;
        }
        if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        if (errno == EINPROGRESS) {
            r = wait_fd(c, POLLOUT);
            if (r == 0 && getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                break;
            if (r == 0)
                r = -(soerr ? soerr : ECONNREFUSED);
        } else {
            r = -errno;
        }
        if (r != -ETIMEDOUT)
            fail(c->err, c->errlen, r, "connect %s:%s: %s", u->host, u->port, strerror(-r));
        else
            fail(c->err, c->errlen, r, "connect %s:%s: timed out after %d ms", u->host, u->port,
                 c->timeout_ms);
        close(c->fd);
        c->fd = -1;
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        return r < 0 ? r : -ECONNREFUSED;
    if (!u->tls)
        return 0;

    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx)
        return fail(c->err, c->errlen, -ENOMEM, "TLS: cannot create a context");
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    if (!o->insecure) {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        if (o->ca_file ? SSL_CTX_load_verify_locations(c->ctx, o->ca_file, NULL) != 1
                       : SSL_CTX_set_default_verify_paths(c->ctx) != 1)
            return tls_error(c, o->ca_file ? o->ca_file : "CA store");
    }
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        return tls_error(c, "setup");
    {
        struct in6_addr a6;
        struct in_addr a4;
        bool ip = inet_pton(AF_INET, u->host, &a4) == 1 || inet_pton(AF_INET6, u->host, &a6) == 1;
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if (!ip)
            SSL_set_tlsext_host_name(c->ssl, u->host);
        if (!o->insecure && (ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, u->host)
                                : X509_VERIFY_PARAM_set1_host(vp, u->host, 0)) != 1)
            return tls_error(c, "setup");
    }
    r = tls_io(c, "handshake", ssl_connect_op, NULL, 0, false);
    return r < 0 ? r : 0;
}

static void conn_close(conn *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->ctx) {
        SSL_CTX_free(c->ctx);
        c->ctx = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static int conn_write(conn *c, const char *buf, size_t len)
{
    while (len) {
        ssize_t n;
        int chunk = len > (1 << 30) ? (1 << 30) : (int)len;
        if (c->ssl) {
            n = tls_io(c, "write", ssl_write_op, (void *)buf, chunk, false);
            if (n <= 0)
                return n < 0 ? (int)n : fail(c->err, c->errlen, -EPROTO, "TLS write: closed");
        } else {
            n = send(c->fd, buf, (size_t)chunk, MSG_NOSIGNAL);
            if (n < 0) {
                int r;
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    return fail(c->err, c->errlen, -errno, "send: %s", strerror(errno));
                if ((r = wait_fd(c, POLLOUT)) < 0)
                    return r;
                continue;
            }
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads what is available (waiting for some); 0 at the end of the stream. */
static ssize_t conn_read(conn *c, char *buf, size_t len)
{
    int chunk = len > (1 << 30) ? (1 << 30) : (int)len;
    if (c->ssl)
        return tls_io(c, "read", ssl_read_op, buf, chunk, true);
    for (;;) {
        ssize_t n = recv(c->fd, buf, (size_t)chunk, 0);
        int r;
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return fail(c->err, c->errlen, -errno, "recv: %s", strerror(errno));
        if ((r = wait_fd(c, POLLIN)) < 0)
            return r;
    }
}

/* ---- the answer ---- */

typedef struct {
    char *buf;
    size_t len, cap;
} growbuf;

static int grow(growbuf *g, size_t need)
{
    if (g->len + need + 1 <= g->cap)
        return 0;
    size_t cap = g->cap ? g->cap : 4096;
    while (cap < g->len + need + 1)
        cap *= 2;
    char *nb = realloc(g->buf, cap);
    if (!nb)
        return -ENOMEM;
    g->buf = nb;
    g->cap = cap;
    return 0;
}

/* Decodes a chunked body in place; returns its length, -EAGAIN when the
 * last chunk has not arrived yet, -EPROTO when malformed. */
static ssize_t dechunk(char *body, size_t len, size_t *decoded)
{
    size_t in = 0, out = 0;
    for (;;) {
        char *end;
        char *eol = memmem(body + in, len - in, "\r\n", 2);
        unsigned long long n;
        if (!eol)
            return -EAGAIN;
        errno = 0;
        n = strtoull(body + in, &end, 16);
        if (end == body + in || errno || (*end != '\r' && *end != ';'))
            return -EPROTO;
        in = (size_t)(eol - body) + 2;
        if (n == 0) {
            /* trailers end with an empty line */
            if (len - in >= 2 && memcmp(body + in, "\r\n", 2) == 0) {
                *decoded = out;
                return (ssize_t)out;
            }
            if (memmem(body + in, len - in, "\r\n\r\n", 4)) {
                *decoded = out;
                return (ssize_t)out;
            }
            return -EAGAIN;
        }
        if (n > len - in || len - in - n < 2)
            return -EAGAIN;
        memmove(body + out, body + in, n);
        out += n;
        in += n;
        if (memcmp(body + in, "\r\n", 2) != 0)
            return -EPROTO;
        in += 2;
    }
}

static const char *header_value(const char *head, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line && line[2] != '\r' && line[2] != '\0') {
        const char *l = line + 2;
        const char *eol = strstr(l, "\r\n");
        if (!eol)
            break;
        if ((size_t)(eol - l) > nlen && strncasecmp(l, name, nlen) == 0 && l[nlen] == ':') {
            const char *v = l + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol;
    }
    return NULL;
}

static int read_answer(conn *c, size_t max_body, cm_httpc_response *resp)
{
    growbuf g = {0};
    size_t head_len = 0, want = SIZE_MAX;
    bool chunked = false;
    int r = 0;

    for (;;) {
        ssize_t n;
        if ((r = grow(&g, 16384)) < 0) {
            r = fail(c->err, c->errlen, r, "out of memory");
            break;
        }
        n = conn_read(c, g.buf + g.len, g.cap - g.len - 1);
        if (n < 0) {
            r = (int)n;
            break;
        }
        g.len += (size_t)n;
        g.buf[g.len] = '\0';
        if (!head_len) {
            char *e = memmem(g.buf, g.len, "\r\n\r\n", 4);
            if (!e) {
                if (g.len > HEAD_MAX) {
                    r = fail(c->err, c->errlen, -EPROTO, "answer headers longer than %d bytes",
                             HEAD_MAX);
                    break;
                }
                if (n == 0) {
                    r = fail(c->err, c->errlen, -EPROTO,
                             g.len ? "connection closed inside the answer's headers"
                                   : "connection closed without an answer");
                    break;
                }
                continue;
            }
            head_len = (size_t)(e - g.buf) + 4;
            e[2] = '\0'; /* head is now a string ending in one "\r\n" */
            int major, minor, status;
            if (sscanf(g.buf, "HTTP/%d.%d %3d", &major, &minor, &status) != 3 || status < 100 ||
                status > 599) {
                r = fail(c->err, c->errlen, -EPROTO, "not an HTTP answer");
                break;
            }
            resp->status = status;
            size_t vl;
            const char *v = header_value(g.buf, "Content-Type", &vl);
            if (v)
                snprintf(resp->content_type, sizeof(resp->content_type), "%.*s", (int)vl, v);
            v = header_value(g.buf, "Transfer-Encoding", &vl);
            chunked = v && vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
            v = header_value(g.buf, "Content-Length", &vl);
            if (v && !chunked) {
                char num[24], *end;
                snprintf(num, sizeof(num), "%.*s", (int)(vl < 23 ? vl : 23), v);
                errno = 0;
                unsigned long long cl = strtoull(num, &end, 10);
                if (end == num || *end || errno) {
                    r = fail(c->err, c->errlen, -EPROTO, "bad Content-Length");
                    break;
                }
                if (cl > max_body) {
                    r = fail(c->err, c->errlen, -EMSGSIZE, "answer body of %llu bytes is over %zu",
                             cl, max_body);
                    break;
                }
                want = (size_t)cl;
            }
            if (status == 204 || status == 304 || (status >= 100 && status < 200))
                want = 0;
        }
        size_t body_len = g.len - head_len;
        if (body_len > max_body + (chunked ? max_body / 8 + 1024 : 0)) {
            r = fail(c->err, c->errlen, -EMSGSIZE, "answer body over %zu bytes", max_body);
            break;
        }
        if (want != SIZE_MAX && body_len >= want) {
            body_len = want;
            g.len = head_len + want;
            break;
        }
        if (chunked &&
            (n == 0 || (body_len >= 5 && memcmp(g.buf + g.len - 4, "\r\n\r\n", 4) == 0))) {
            /* decode a copy: the wire bytes must stay intact until complete */
            size_t dec = 0;
            char *copy = malloc(body_len + 1);
            ssize_t d;
            if (!copy) {
                r = fail(c->err, c->errlen, -ENOMEM, "out of memory");
                break;
            }
            memcpy(copy, g.buf + head_len, body_len);
            d = dechunk(copy, body_len, &dec);
            if (d >= 0) {
                memcpy(g.buf + head_len, copy, dec);
                g.len = head_len + dec;
                free(copy);
                break;
            }
            free(copy);
            if (d == -EPROTO) {
                r = fail(c->err, c->errlen, -EPROTO, "malformed chunked answer");
                break;
            }
        }
        if (n == 0) {
            if (chunked || want != SIZE_MAX)
                r = fail(c->err, c->errlen, -EPROTO, "connection closed inside the answer's body");
            break;
        }
    }
    if (r < 0) {
        free(g.buf);
        resp->status = 0;
        resp->content_type[0] = '\0';
        return r;
    }
    resp->len = g.len - head_len;
    resp->body = malloc(resp->len + 1);
    if (!resp->body) {
        free(g.buf);
        return fail(c->err, c->errlen, -ENOMEM, "out of memory");
    }
    memcpy(resp->body, g.buf + head_len, resp->len);
    resp->body[resp->len] = '\0';
    free(g.buf);
    return 0;
}

int cm_httpc_request(const cm_httpc_url *base, const cm_httpc_opts *opts, const char *method,
                     const char *path, const char *const *headers, const char *body, size_t bodylen,
                     cm_httpc_response *resp, char *err, size_t errlen)
{
    static const cm_httpc_opts defaults = {0};
    const cm_httpc_opts *o = opts ? opts : &defaults;
    conn c = {.fd = -1, .err = err, .errlen = errlen};
    growbuf req = {0};
    int r;

    memset(resp, 0, sizeof(*resp));
    if (!path || path[0] != '/')
        return fail(err, errlen, -EINVAL, "request path must start with /");
    c.timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
    c.deadline_ms = now_ms() + c.timeout_ms;

    bool v6 = strchr(base->host, ':') != NULL;
    bool default_port = strcmp(base->port, base->tls ? "443" : "80") == 0;
    size_t need = strlen(method) + strlen(base->prefix) + strlen(path) + strlen(base->host) + 256;
    for (const char *const *h = headers; h && *h; h++)
        need += strlen(*h) + 2;
    if (grow(&req, need) < 0)
        return fail(err, errlen, -ENOMEM, "out of memory");
    req.len = (size_t)snprintf(req.buf, req.cap, "%s %s%s HTTP/1.1\r\nHost: %s%s%s%s%s\r\n", method,
                               base->prefix, path, v6 ? "[" : "", base->host, v6 ? "]" : "",
                               default_port ? "" : ":", default_port ? "" : base->port);
    for (const char *const *h = headers; h && *h; h++)
        req.len += (size_t)snprintf(req.buf + req.len, req.cap - req.len, "%s\r\n", *h);
    if (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
        req.len += (size_t)snprintf(req.buf + req.len, req.cap - req.len, "Content-Length: %zu\r\n",
                                    body ? bodylen : 0);
    req.len += (size_t)snprintf(req.buf + req.len, req.cap - req.len, "Connection: close\r\n\r\n");

    r = conn_open(&c, base, o);
    if (r == 0)
        r = conn_write(&c, req.buf, req.len);
    if (r == 0 && body && bodylen)
        r = conn_write(&c, body, bodylen);
    if (r == 0)
        r = read_answer(&c, o->max_body ? o->max_body : 8u << 20, resp);
    conn_close(&c);
    free(req.buf);
    if (r < 0)
        cm_httpc_response_free(resp);
    return r;
}

void cm_httpc_response_free(cm_httpc_response *resp)
{
    if (!resp)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->len = 0;
}

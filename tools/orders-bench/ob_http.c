/*
 * ob_http.c - see ob_http.h.
 */
#include "ob_http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX (64 * 1024)   /* status line and headers */
#define BODY_MAX (1024 * 1024) /* a response body */

/* ---- URLs ---- */

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return false;
}

/* Splits the authority "host[:port]" or "[v6][:port]" into u->host and u->port. */
static int split_authority(const char *a, size_t n, ob_url *u, char *err, size_t errlen)
{
    const char *host = a, *colon = NULL;
    size_t hlen = n;
    char port[8];

    if (n > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', n);
        if (!close)
            goto bad;
        host = a + 1;
        hlen = (size_t)(close - a - 1);
        if (close + 1 < a + n) {
            if (close[1] != ':')
                goto bad;
            colon = close + 1;
        }
    } else if ((colon = memchr(a, ':', n)) != NULL) {
        hlen = (size_t)(colon - a);
    }
    if (hlen == 0 || hlen >= sizeof(u->host))
        goto bad;
    memcpy(u->host, host, hlen);
    u->host[hlen] = '\0';
    u->port = u->tls ? 443 : 80;
    if (colon) {
        size_t plen = (size_t)(a + n - colon - 1);
        char *end;
        long v;
        if (plen == 0 || plen >= sizeof(port))
            goto bad;
        memcpy(port, colon + 1, plen);
        port[plen] = '\0';
        v = strtol(port, &end, 10);
        if (*end || !isdigit((unsigned char)port[0]) || v < 1 || v > 65535)
            goto bad;
        u->port = (int)v;
    }
    snprintf(u->hostport, sizeof(u->hostport), "%.*s", (int)n, a);
    return 0;
bad:
    snprintf(err, errlen, "bad host or port in URL");
    return -EINVAL;
}

int ob_url_parse(const char *s, ob_url *ret, char *err, size_t errlen)
{
    struct addrinfo hints, *ai = NULL;
    const char *auth, *path;
    char port[8];
    size_t plen;
    int r;

    memset(ret, 0, sizeof(*ret));
    if (strncasecmp(s, "http://", 7) == 0) {
        auth = s + 7;
    } else if (strncasecmp(s, "https://", 8) == 0) {
        auth = s + 8;
        ret->tls = true;
    } else {
        snprintf(err, errlen, "not an http:// or https:// URL");
        return -EINVAL;
    }
    path = auth + strcspn(auth, "/?#");
    if (*path == '?' || *path == '#' || strchr(path, '?') || strchr(path, '#')) {
        snprintf(err, errlen, "URL must not have a query or fragment");
        return -EINVAL;
    }
    if ((r = split_authority(auth, (size_t)(path - auth), ret, err, errlen)) < 0)
        return r;
    plen = strlen(path);
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    if (plen >= sizeof(ret->prefix)) {
        snprintf(err, errlen, "URL path is too long");
        return -EINVAL;
    }
    memcpy(ret->prefix, path, plen);
    ret->prefix[plen] = '\0';
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", ret->port);
    if ((r = getaddrinfo(ret->host, port, &hints, &ai)) != 0) {
        snprintf(err, errlen, "could not resolve \"%s\": %s", ret->host, gai_strerror(r));
        return -EINVAL;
    }
    memcpy(&ret->addr, ai->ai_addr, ai->ai_addrlen);
    ret->addrlen = ai->ai_addrlen;
    ret->loopback = is_loopback(&ret->addr);
    freeaddrinfo(ai);
    return 0;
}

static bool is_ip_literal(const char *host)
{
    unsigned char a[16];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

int ob_url_tls(ob_url *u, const char *ca_file, bool insecure, char *err, size_t errlen)
{
    SSL_CTX *ctx;

    if (!u->tls)
        return 0;
    if (!(ctx = SSL_CTX_new(TLS_client_method()))) {
        snprintf(err, errlen, "could not create a TLS context");
        return -EINVAL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (!insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1
                    : SSL_CTX_set_default_verify_paths(ctx) != 1) {
            snprintf(err, errlen, "could not load the CA certificates %s", ca_file ? ca_file : "");
            SSL_CTX_free(ctx);
            return -EINVAL;
        }
    }
    u->ssl_ctx = ctx;
    return 0;
}

void ob_url_free(ob_url *u)
{
    if (u->ssl_ctx)
        SSL_CTX_free(u->ssl_ctx);
    u->ssl_ctx = NULL;
}

/* ---- connections ---- */

void ob_conn_init(ob_conn *c, const ob_url *url, int epfd)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->epfd = epfd;
    c->url = url;
    c->state = OB_CONN_CLOSED;
}

void ob_conn_close(ob_conn *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    c->ssl = NULL;
    if (c->fd >= 0)
        close(c->fd); /* also leaves the epoll set: the fd is never duplicated */
    c->fd = -1;
    c->state = OB_CONN_CLOSED;
    c->nresp = 0;
}

void ob_conn_free(ob_conn *c)
{
    ob_conn_close(c);
    free(c->req);
    free(c->buf);
    c->req = c->buf = NULL;
}

static int fail(ob_conn *c, int r, const char *what)
{
    snprintf(c->err, sizeof(c->err), "%s: %s", what, strerror(-r));
    ob_conn_close(c);
    return r;
}

static int write_some(ob_conn *c);
static int read_some(ob_conn *c);

/* Why the last TLS call failed, for c->err. */
static int tls_fail(ob_conn *c, const char *what)
{
    unsigned long e = ERR_get_error();
    long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    char buf[120] = "connection closed";

    if (vr != X509_V_OK)
        snprintf(buf, sizeof(buf), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    else if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(c->err, sizeof(c->err), "TLS %s: %s", what, buf);
    ob_conn_close(c);
    return -EPROTO;
}

/* Runs the handshake as far as the socket allows; once done, sends the
 * request waiting, if any. */
static int tls_handshake(ob_conn *c)
{
    int n;

    ERR_clear_error();
    n = SSL_connect(c->ssl);
    if (n != 1) {
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return 1;
        return tls_fail(c, "handshake");
    }
    c->handshakes++;
    if (c->reqlen > c->reqoff) {
        c->state = OB_CONN_SENDING;
        return write_some(c);
    }
    c->state = OB_CONN_IDLE;
    return 1;
}

/* The TCP connection is up: starts TLS on it. */
static int tls_start(ob_conn *c)
{
    SSL *ssl = SSL_new(c->url->ssl_ctx);

    if (!ssl)
        return tls_fail(c, "setup");
    c->ssl = ssl;
    if (SSL_set_fd(ssl, c->fd) != 1)
        return tls_fail(c, "setup");
    if (!is_ip_literal(c->url->host))
        SSL_set_tlsext_host_name(ssl, c->url->host);
    if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if ((is_ip_literal(c->url->host) ? X509_VERIFY_PARAM_set1_ip_asc(vp, c->url->host)
                                         : X509_VERIFY_PARAM_set1_host(vp, c->url->host, 0)) != 1)
            return tls_fail(c, "setup");
    }
    c->state = OB_CONN_HANDSHAKE;
    return tls_handshake(c);
}

/* send()/recv() or their TLS forms: bytes moved, 0 at the end of the stream
 * (recv), -EAGAIN when the socket would block, else a negative errno (the
 * message in c->err for TLS failures, which also close the connection). */
static ssize_t io_send(ob_conn *c, const char *b, size_t n)
{
    if (c->ssl) {
        int k, e;
        ERR_clear_error();
        k = SSL_write(c->ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
        if (k > 0)
            return k;
        e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -EAGAIN;
        if (e == SSL_ERROR_SYSCALL && errno)
            return -errno;
        return tls_fail(c, "write");
    }
    for (;;) {
        ssize_t k = send(c->fd, b, n, MSG_NOSIGNAL);
        if (k >= 0)
            return k;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t io_recv(ob_conn *c, char *b, size_t n)
{
    if (c->ssl) {
        int k, e;
        ERR_clear_error();
        k = SSL_read(c->ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
        if (k > 0)
            return k;
        e = SSL_get_error(c->ssl, k);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return -EAGAIN;
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
            return errno && e == SSL_ERROR_SYSCALL && errno != EAGAIN ? -errno : 0;
        return tls_fail(c, "read");
    }
    for (;;) {
        ssize_t k = recv(c->fd, b, n, 0);
        if (k >= 0)
            return k;
        if (errno == EINTR)
            continue;
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

int ob_conn_connect(ob_conn *c)
{
    struct epoll_event ev;
    int one = 1;

    ob_conn_close(c);
    c->fd = socket(c->url->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return fail(c, -errno, "could not create a socket");
    c->opened++;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (c->epfd >= 0) {
        memset(&ev, 0, sizeof(ev));
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.ptr = c;
        if (epoll_ctl(c->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            return fail(c, -errno, "could not add a socket to epoll");
    }
    c->state = OB_CONN_CONNECTING;
    if (connect(c->fd, (const struct sockaddr *)&c->url->addr, c->url->addrlen) == 0) {
        int r = c->url->tls ? tls_start(c) : 0;
        if (r < 0)
            return r;
        if (!c->url->tls)
            c->state = OB_CONN_IDLE;
    } else if (errno != EINPROGRESS) {
        return fail(c, -errno, "could not connect");
    }
    return 0;
}

/* A failure that a resend may cure: the server closed a reused connection
 * before answering. Reconnects and starts over, once per request. */
static int closed_by_server(ob_conn *c, int r, const char *what)
{
    int k;

    if (c->nresp == 0 || c->retried || c->buflen > 0)
        return fail(c, r, what);
    c->retried = true;
    c->resends++;
    if ((k = ob_conn_connect(c)) < 0)
        return k;
    c->reqoff = 0;
    if (c->state != OB_CONN_IDLE)
        return 1; /* connecting: the request goes out once connected */
    c->state = OB_CONN_SENDING;
    if ((k = write_some(c)) <= 0 || c->state != OB_CONN_RECEIVING)
        return k;
    return read_some(c);
}

static int write_some(ob_conn *c)
{
    while (c->reqoff < c->reqlen) {
        ssize_t n = io_send(c, c->req + c->reqoff, c->reqlen - c->reqoff);
        if (n < 0) {
            if (n == -EAGAIN)
                return 1;
            if (n == -EPROTO && c->state == OB_CONN_CLOSED)
                return (int)n; /* a TLS failure, already closed */
            if (n == -EPIPE || n == -ECONNRESET)
                return closed_by_server(c, (int)n, "could not send the request");
            return fail(c, (int)n, "could not send the request");
        }
        c->reqoff += (size_t)n;
    }
    c->state = OB_CONN_RECEIVING;
    c->buflen = 0;
    c->headlen = 0;
    return 1;
}

/* Case-insensitive: does the comma-separated list v (length n) hold token t? */
static bool has_token(const char *v, size_t n, const char *t)
{
    size_t tl = strlen(t), i = 0;

    while (i < n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && (v[a] == ' ' || v[a] == '\t'))
            a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
            b--;
        if (b - a == tl && strncasecmp(v + a, t, tl) == 0)
            return true;
        i = j + 1;
    }
    return false;
}

/* One header line [p, p+n): applies Content-Length, Connection, Transfer-Encoding. */
static int header_line(ob_conn *c, const char *p, size_t n, bool *have_len)
{
    const char *colon = memchr(p, ':', n), *v;
    size_t nl, vl;

    if (!colon)
        return fail(c, -EPROTO, "malformed response header");
    nl = (size_t)(colon - p);
    v = colon + 1;
    vl = n - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t'))
        v++, vl--;
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    if (nl == 14 && strncasecmp(p, "content-length", nl) == 0) {
        size_t len = 0, i;
        if (vl == 0 || vl > 8)
            return fail(c, -EPROTO, "bad Content-Length");
        for (i = 0; i < vl; i++) {
            if (!isdigit((unsigned char)v[i]))
                return fail(c, -EPROTO, "bad Content-Length");
            len = len * 10 + (size_t)(v[i] - '0');
        }
        if ((*have_len && len != c->bodylen) || len > BODY_MAX)
            return fail(c, -EPROTO, "bad Content-Length");
        c->bodylen = len;
        *have_len = true;
    } else if (nl == 10 && strncasecmp(p, "connection", nl) == 0) {
        if (has_token(v, vl, "close"))
            c->close_after = true;
        else if (has_token(v, vl, "keep-alive"))
            c->close_after = false;
    } else if (nl == 17 && strncasecmp(p, "transfer-encoding", nl) == 0) {
        if (!(vl == 8 && strncasecmp(v, "identity", 8) == 0))
            return fail(c, -EPROTO, "chunked (Transfer-Encoding) responses are not supported");
    }
    return 0;
}

/* Parses status line and headers once "\r\n\r\n" has arrived. */
static int parse_head(ob_conn *c)
{
    const char *b = c->buf, *end = memmem(b, c->buflen, "\r\n\r\n", 4), *p, *eol;
    bool have_len = false;
    int r;

    if (!end)
        return c->buflen > HEAD_MAX ? fail(c, -EMSGSIZE, "response header too large") : 1;
    c->headlen = (size_t)(end - b) + 4;
    if (c->headlen < 14 || memcmp(b, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)b[7]) ||
        b[8] != ' ' || !isdigit((unsigned char)b[9]) || !isdigit((unsigned char)b[10]) ||
        !isdigit((unsigned char)b[11]) || (b[12] != ' ' && b[12] != '\r'))
        return fail(c, -EPROTO, "malformed status line");
    c->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    c->close_after = b[7] == '0';
    c->bodylen = 0;
    p = (const char *)memmem(b, c->headlen, "\r\n", 2) + 2;
    while (p < end + 2) {
        eol = memmem(p, (size_t)(end + 2 - p), "\r\n", 2);
        if ((r = header_line(c, p, (size_t)(eol - p), &have_len)) < 0)
            return r;
        p = eol + 2;
    }
    if (c->status < 200)
        return fail(c, -EPROTO, "unexpected 1xx response");
    if (!have_len && c->status != 204 && c->status != 304)
        return fail(c, -EPROTO, "response without Content-Length");
    return 1;
}

static int read_some(ob_conn *c)
{
    for (;;) {
        ssize_t n;
        int r;

        if (c->bufcap - c->buflen < 4096) {
            size_t cap = c->bufcap ? c->bufcap * 2 : 16384;
            char *nb;
            if (cap > HEAD_MAX + BODY_MAX + 16384)
                return fail(c, -EMSGSIZE, "response too large");
            if (!(nb = realloc(c->buf, cap)))
                return fail(c, -ENOMEM, "out of memory");
            c->buf = nb;
            c->bufcap = cap;
        }
        n = io_recv(c, c->buf + c->buflen, c->bufcap - c->buflen);
        if (n == -EAGAIN)
            return 1;
        if (n == -EPROTO && c->state == OB_CONN_CLOSED)
            return (int)n; /* a TLS failure, already closed */
        if (n < 0 && n != -ECONNRESET)
            return fail(c, (int)n, "could not read the response");
        if (n <= 0)
            return closed_by_server(c, -ECONNRESET, "connection closed before the response");
        c->buflen += (size_t)n;
        if (c->headlen == 0 && (r = parse_head(c)) <= 0)
            return r;
        if (c->headlen > 0 && c->buflen >= c->headlen + c->bodylen) {
            if (c->buflen > c->headlen + c->bodylen)
                c->close_after = true; /* bytes nobody asked for: do not reuse */
            c->state = OB_CONN_DONE;
            c->nresp++;
            return 0;
        }
    }
}

/* An idle connection became readable: the server closed it (or sent junk). */
static int idle_event(ob_conn *c)
{
    char b[256];
    ssize_t n = io_recv(c, b, sizeof(b)); /* TLS: session tickets end here */

    if (n == -EAGAIN)
        return 1;
    ob_conn_close(c);
    return 1;
}

static int connected(ob_conn *c)
{
    int soerr = 0;
    socklen_t len = sizeof(soerr);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr == EINPROGRESS || soerr == EALREADY)
        return 1;
    if (soerr != 0)
        return fail(c, -soerr, "could not connect");
    if (c->url->tls)
        return tls_start(c);
    if (c->reqlen > c->reqoff) {
        c->state = OB_CONN_SENDING;
        return write_some(c);
    }
    c->state = OB_CONN_IDLE;
    return 1;
}

int ob_conn_on_event(ob_conn *c, uint32_t events)
{
    int r;

    switch (c->state) {
    case OB_CONN_CONNECTING:
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return 1;
        if ((r = connected(c)) <= 0 || c->state != OB_CONN_RECEIVING)
            return r;
        return read_some(c);
    case OB_CONN_HANDSHAKE:
        if ((r = tls_handshake(c)) <= 0 || c->state != OB_CONN_RECEIVING)
            return r;
        return read_some(c);
    case OB_CONN_SENDING:
        if ((r = write_some(c)) <= 0 || c->state != OB_CONN_RECEIVING)
            return r;
        return read_some(c);
    case OB_CONN_RECEIVING:
        if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)))
            return 1;
        return read_some(c);
    case OB_CONN_IDLE:
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP))
            return idle_event(c);
        return 1;
    case OB_CONN_DONE:
        return 0;
    case OB_CONN_CLOSED:
    default:
        return 1;
    }
}

static int build(ob_conn *c, const char *method, const char *path, const char *headers,
                 const char *body, size_t bodylen)
{
    size_t need = strlen(method) + strlen(c->url->prefix) + strlen(path) +
                  strlen(c->url->hostport) + strlen(headers) + bodylen + 160;
    int n;

    if (need > c->reqcap) {
        char *nr = realloc(c->req, need);
        if (!nr)
            return -ENOMEM;
        c->req = nr;
        c->reqcap = need;
    }
    if (body)
        n = snprintf(c->req, c->reqcap,
                     "%s %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     method, c->url->prefix, path, c->url->hostport, bodylen, headers);
    else
        n = snprintf(c->req, c->reqcap, "%s %s%s HTTP/1.1\r\nHost: %s\r\n%s\r\n", method,
                     c->url->prefix, path, c->url->hostport, headers);
    if (n < 0 || (size_t)n + bodylen >= c->reqcap)
        return -EOVERFLOW;
    if (body)
        memcpy(c->req + n, body, bodylen);
    c->reqlen = (size_t)n + bodylen;
    c->reqoff = 0;
    return 0;
}

int ob_conn_request(ob_conn *c, const char *method, const char *path, const char *headers,
                    const char *body, size_t bodylen)
{
    int r;

    c->retried = false;
    c->buflen = 0;
    c->headlen = 0;
    if ((r = build(c, method, path, headers, body, body ? bodylen : 0)) < 0)
        return fail(c, r, "could not build the request");
    if (c->state == OB_CONN_CLOSED) {
        if ((r = ob_conn_connect(c)) < 0)
            return r;
        if (c->state != OB_CONN_IDLE)
            return 1; /* connecting or in the handshake: sent once up */
    }
    c->state = OB_CONN_SENDING;
    if ((r = write_some(c)) <= 0 || c->state != OB_CONN_RECEIVING)
        return r;
    return read_some(c);
}

const char *ob_conn_body(const ob_conn *c, size_t *ret_len)
{
    *ret_len = c->bodylen;
    return c->buf + c->headlen;
}

void ob_conn_finish(ob_conn *c)
{
    c->reqlen = c->reqoff = 0;
    c->buflen = c->headlen = 0;
    if (c->close_after)
        ob_conn_close(c);
    else
        c->state = OB_CONN_IDLE;
}

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ob_http_simple(const ob_url *url, const char *method, const char *path, const char *headers,
                   const char *body, int timeout_ms, int *ret_status, char *err, size_t errlen)
{
    int64_t deadline = mono_ms() + timeout_ms;
    ob_conn c;
    int r;

    ob_conn_init(&c, url, -1);
    r = ob_conn_request(&c, method, path, headers, body, body ? strlen(body) : 0);
    while (r == 1) {
        struct pollfd pfd = {.fd = c.fd, .events = POLLIN};
        int64_t left = deadline - mono_ms();
        uint32_t ev = 0;

        if (c.state == OB_CONN_CONNECTING || c.state == OB_CONN_SENDING ||
            (c.state == OB_CONN_HANDSHAKE && SSL_want_write((SSL *)c.ssl)))
            pfd.events = POLLOUT;
        if (left <= 0) {
            snprintf(c.err, sizeof(c.err), "no response within %d ms", timeout_ms);
            r = -ETIMEDOUT;
            break;
        }
        if (poll(&pfd, 1, (int)left) < 0 && errno != EINTR) {
            r = fail(&c, -errno, "poll failed");
            break;
        }
        ev |= (pfd.revents & POLLIN) ? EPOLLIN : 0;
        ev |= (pfd.revents & POLLOUT) ? EPOLLOUT : 0;
        ev |= (pfd.revents & POLLERR) ? EPOLLERR : 0;
        ev |= (pfd.revents & POLLHUP) ? EPOLLHUP : 0;
        r = ob_conn_on_event(&c, ev);
    }
    if (r == 0)
        *ret_status = c.status;
    else
        snprintf(err, errlen, "%s", c.err);
    ob_conn_free(&c);
    return r;
}

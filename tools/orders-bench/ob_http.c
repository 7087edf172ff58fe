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
    u->port = 80;
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
    static const char scheme[] = "http://";
    struct addrinfo hints, *ai = NULL;
    const char *auth, *path;
    char port[8];
    size_t plen;
    int r;

    memset(ret, 0, sizeof(*ret));
    if (strncasecmp(s, scheme, sizeof(scheme) - 1) != 0) {
        snprintf(err, errlen, "not an http:// URL");
        return -EINVAL;
    }
    auth = s + sizeof(scheme) - 1;
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
    if (connect(c->fd, (const struct sockaddr *)&c->url->addr, c->url->addrlen) == 0)
        c->state = OB_CONN_IDLE;
    else if (errno != EINPROGRESS)
        return fail(c, -errno, "could not connect");
    return 0;
}

static int write_some(ob_conn *c);
static int read_some(ob_conn *c);

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
        ssize_t n = send(c->fd, c->req + c->reqoff, c->reqlen - c->reqoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            if (errno == EPIPE || errno == ECONNRESET)
                return closed_by_server(c, -errno, "could not send the request");
            return fail(c, -errno, "could not send the request");
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
        n = recv(c->fd, c->buf + c->buflen, c->bufcap - c->buflen, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n < 0 && errno != ECONNRESET)
            return fail(c, -errno, "could not read the response");
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
    ssize_t n = recv(c->fd, b, sizeof(b), 0);

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
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
        if (c->state == OB_CONN_CONNECTING)
            return 1;
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

        if (c.state == OB_CONN_CONNECTING || c.state == OB_CONN_SENDING)
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

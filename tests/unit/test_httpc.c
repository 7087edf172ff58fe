/*
 * test_httpc.c - the HTTP client against a real TCP peer on 127.0.0.1: a
 * thread of this test accepts one connection, keeps the request it got and
 * answers with bytes chosen by the case (whole, in pieces, chunked, closed
 * early, never), so every way an answer can end is exercised on a socket.
 */
#include "cm_httpc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

typedef struct {
    int lfd;
    int port;
    const char *const *pieces; /* written in turn, 20 ms apart; NULL-terminated */
    int hold_ms;               /* after the pieces, wait this long before closing */
    char request[8192];
    size_t request_len;
    pthread_t thread;
} peer;

static void *peer_main(void *arg)
{
    peer *p = arg;
    int fd = accept(p->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    /* the request: headers, then Content-Length bytes of body */
    for (;;) {
        ssize_t n =
            recv(fd, p->request + p->request_len, sizeof(p->request) - 1 - p->request_len, 0);
        if (n <= 0)
            break;
        p->request_len += (size_t)n;
        p->request[p->request_len] = '\0';
        char *e = strstr(p->request, "\r\n\r\n");
        if (e) {
            const char *cl = strstr(p->request, "Content-Length: ");
            size_t body = cl ? strtoul(cl + 16, NULL, 10) : 0;
            if (p->request_len >= (size_t)(e - p->request) + 4 + body)
                break;
        }
    }
    for (const char *const *s = p->pieces; s && *s; s++) {
        if (send(fd, *s, strlen(*s), MSG_NOSIGNAL) < 0)
            break;
        if (s[1])
            usleep(20000);
    }
    if (p->hold_ms)
        usleep((useconds_t)p->hold_ms * 1000);
    close(fd);
    return NULL;
}

static void peer_start(peer *p, const char *const *pieces, int hold_ms)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    memset(p, 0, sizeof(*p));
    p->pieces = pieces;
    p->hold_ms = hold_ms;
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(p->lfd >= 0);
    assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(p->lfd, 4), 0);
    assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&a, &al), 0);
    p->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&p->thread, NULL, peer_main, p), 0);
}

static void peer_stop(peer *p)
{
    pthread_join(p->thread, NULL);
    close(p->lfd);
}

static int ask(peer *p, const cm_httpc_opts *o, const char *method, const char *path,
               const char *body, cm_httpc_response *resp, char *err, size_t errlen)
{
    char url[64];
    cm_httpc_url u;
    static const char *const hdrs[] = {"Authorization: Bearer t0k", NULL};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/base/", p->port);
    assert_int_equal(cm_httpc_parse_url(url, &u, err, errlen), 0);
    return cm_httpc_request(&u, o, method, path, hdrs, body, body ? strlen(body) : 0, resp, err,
                            errlen);
}

static void test_parse_url(void **state)
{
    cm_httpc_url u;
    char err[256];
    (void)state;
    assert_int_equal(cm_httpc_parse_url("http://127.0.0.1:9411", &u, err, sizeof(err)), 0);
    assert_false(u.tls);
    assert_string_equal(u.host, "127.0.0.1");
    assert_string_equal(u.port, "9411");
    assert_string_equal(u.prefix, "");
    assert_int_equal(cm_httpc_parse_url("https://orders.example/api/", &u, err, sizeof(err)), 0);
    assert_true(u.tls);
    assert_string_equal(u.port, "443");
    assert_string_equal(u.prefix, "/api");
    assert_int_equal(cm_httpc_parse_url("http://[::1]:8080/x", &u, err, sizeof(err)), 0);
    assert_string_equal(u.host, "::1");
    assert_string_equal(u.port, "8080");
    assert_string_equal(u.prefix, "/x");

    const char *bad[] = {"",
                         "ftp://h",
                         "http://",
                         "http://h:0",
                         "http://h:x",
                         "http://h:70000",
                         "http://[::1",
                         "http://u:p@h/",
                         "http://h/?q",
                         "127.0.0.1:8080"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(cm_httpc_parse_url(bad[i], &u, err, sizeof(err)), -EINVAL);
        assert_true(err[0] != '\0');
    }
}

static void test_content_length_in_pieces(void **state)
{
    static const char *const answer[] = {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
        "Content-Length: 11\r\n\r\n{\"a\":", "\"bcd\"}GARBAGE-AFTER", NULL};
    peer p;
    cm_httpc_response r;
    char err[256] = "";
    (void)state;
    peer_start(&p, answer, 0);
    assert_int_equal(ask(&p, NULL, "POST", "/orders", "{\"x\":1}", &r, err, sizeof(err)), 0);
    peer_stop(&p);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "application/json");
    assert_int_equal(r.len, 11);
    assert_string_equal(r.body, "{\"a\":\"bcd\"}");
    assert_non_null(strstr(p.request, "POST /base/orders HTTP/1.1\r\n"));
    assert_non_null(strstr(p.request, "\r\nHost: 127.0.0.1:"));
    assert_non_null(strstr(p.request, "\r\nAuthorization: Bearer t0k\r\n"));
    assert_non_null(strstr(p.request, "\r\nContent-Length: 7\r\n"));
    assert_non_null(strstr(p.request, "\r\nConnection: close\r\n\r\n{\"x\":1}"));
    cm_httpc_response_free(&r);
}

static void test_chunked(void **state)
{
    static const char *const answer[] = {
        "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        "lo\r\n7;ext=1\r\n, world\r\n", "0\r\n\r\n", NULL};
    peer p;
    cm_httpc_response r;
    char err[256] = "";
    (void)state;
    peer_start(&p, answer, 2000); /* stays open: the last chunk must end the answer */
    assert_int_equal(ask(&p, NULL, "GET", "/x", NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(r.status, 404);
    assert_string_equal(r.body, "hello, world");
    assert_null(strstr(p.request, "Content-Length"));
    cm_httpc_response_free(&r);
    peer_stop(&p);
}

static void test_close_delimited(void **state)
{
    static const char *const answer[] = {"HTTP/1.0 200 OK\r\n\r\nuntil ", "the end", NULL};
    peer p;
    cm_httpc_response r;
    char err[256] = "";
    (void)state;
    peer_start(&p, answer, 0);
    assert_int_equal(ask(&p, NULL, "GET", "/", NULL, &r, err, sizeof(err)), 0);
    peer_stop(&p);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "until the end");
    assert_string_equal(r.content_type, "");
    cm_httpc_response_free(&r);
}

static void test_failures(void **state)
{
    static const char *const truncated[] = {"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                                            NULL};
    static const char *const junk[] = {"SSH-2.0-OpenSSH\r\n\r\n", NULL};
    static const char *const big[] = {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", NULL};
    peer p;
    cm_httpc_response r;
    char err[256];
    cm_httpc_opts quick = {.timeout_ms = 300};
    cm_httpc_opts small = {.max_body = 10};
    struct timespec t0, t1;
    (void)state;

    peer_start(&p, truncated, 0);
    assert_int_equal(ask(&p, NULL, "GET", "/", NULL, &r, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "closed"));
    assert_null(r.body);
    peer_stop(&p);

    peer_start(&p, junk, 0);
    assert_int_equal(ask(&p, NULL, "GET", "/", NULL, &r, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "not an HTTP answer"));
    peer_stop(&p);

    peer_start(&p, big, 0);
    assert_int_equal(ask(&p, &small, "GET", "/", NULL, &r, err, sizeof(err)), -EMSGSIZE);
    peer_stop(&p);

    /* a peer that takes the request and never answers: bounded by timeout_ms */
    peer_start(&p, NULL, 1500);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ask(&p, &quick, "GET", "/", NULL, &r, err, sizeof(err)), -ETIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 290 && ms < 1200);
    assert_non_null(strstr(err, "timed out after 300 ms"));
    peer_stop(&p);

    /* nobody listening: a port bound and released again */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    int port = ntohs(a.sin_port);
    close(fd);
    cm_httpc_url u;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    assert_int_equal(cm_httpc_parse_url(url, &u, err, sizeof(err)), 0);
    assert_int_equal(cm_httpc_request(&u, NULL, "GET", "/", NULL, NULL, 0, &r, err, sizeof(err)),
                     -ECONNREFUSED);
    assert_non_null(strstr(err, "Connection refused"));
    assert_int_equal(
        cm_httpc_request(&u, NULL, "GET", "no-slash", NULL, NULL, 0, &r, err, sizeof(err)),
        -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url), cmocka_unit_test(test_content_length_in_pieces),
        cmocka_unit_test(test_chunked),   cmocka_unit_test(test_close_delimited),
        cmocka_unit_test(test_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_trace.c - cm_trace: traceparent parsing, the sampling decision,
 * configuration errors, tracing off, spans POSTed as Zipkin v2 JSON to a
 * real socket peer, and a full queue or an unreachable collector costing
 * only counted spans.
 */
#include "cm_outbox.h"
#include "cm_trace.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#define TP_SAMPLED "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TP_UNSAMPLED "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"

static void parse_traceparent(void **state)
{
    char trace[33], span[17];
    bool sampled = false;
    (void)state;

    assert_true(cm_traceparent_parse(TP_SAMPLED, trace, span, &sampled));
    assert_string_equal(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(span, "00f067aa0ba902b7");
    assert_true(sampled);
    assert_true(cm_traceparent_parse(TP_UNSAMPLED, trace, span, &sampled));
    assert_false(sampled);
    /* flags 0x0b: bit 0 set */
    assert_true(cm_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0b",
                                     trace, span, &sampled));
    assert_true(sampled);
    assert_true(cm_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0a",
                                     trace, span, &sampled));
    assert_false(sampled);
    assert_false(cm_traceparent_parse(NULL, trace, span, &sampled));
    assert_false(cm_traceparent_parse("", trace, span, &sampled));
    assert_false(cm_traceparent_parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                                      trace, span, &sampled));
}

static void random_trace(char out[33])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++)
        out[i] = digits[rand() % 16];
    out[32] = '\0';
}

static void sampling_by_trace_id(void **state)
{
    char t[33];
    int at_half = 0, n = 4000;
    (void)state;

    srand(7);
    for (int i = 0; i < n; i++) {
        random_trace(t);
        assert_true(cm_trace_sampled_at(t, 1.0));
        assert_false(cm_trace_sampled_at(t, 0.0));
        bool low = cm_trace_sampled_at(t, 0.3), half = cm_trace_sampled_at(t, 0.5);
        /* the same id at a higher ratio stays sampled */
        assert_true(!low || half);
        at_half += half;
    }
    assert_in_range(at_half, n * 45 / 100, n * 55 / 100);
    assert_true(cm_trace_sampled_at("ffffffffffffffff0000000000000000", 0.01));
    assert_false(cm_trace_sampled_at("0000000000000000ffffffffffffffff", 0.99));
}

static void config_errors_name_the_variable(void **state)
{
    char err[256];
    cm_trace_config c = {"http://127.0.0.1:9411", "0.1", 4096, "svc"};
    (void)state;

    assert_int_equal(cm_trace_config_check(&c, err, sizeof(err)), 0);
    static const char *const bad_ratios[] = {"", "x", "-0.1", "1.5", "0.5s", "nan"};
    for (size_t i = 0; i < sizeof(bad_ratios) / sizeof(bad_ratios[0]); i++) {
        c.sample_ratio = bad_ratios[i];
        assert_int_equal(cm_trace_config_check(&c, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "TRACING_SAMPLE_RATIO"));
    }
    c.sample_ratio = "1";
    c.url = "ftp://127.0.0.1:9411";
    assert_int_equal(cm_trace_config_check(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "TRACING_URL"));
    c.url = "http://127.0.0.1:9411";
    c.queue = 3;
    assert_int_equal(cm_trace_config_check(&c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "TRACING_QUEUE"));
}

static cm_metrics *new_metrics(void)
{
    cm_metrics *m;
    assert_int_equal(cm_metrics_new(&m), 0);
    cm_metrics_describe(m, "orders_spans_sent_total", CM_METRIC_COUNTER, "Sent.");
    cm_metrics_describe(m, "orders_spans_dropped_total", CM_METRIC_COUNTER, "Dropped.");
    return m;
}

static double metric(cm_metrics *m, const char *series)
{
    char *text = cm_metrics_render(m), *p, needle[128];
    double v = -1;
    assert_non_null(text);
    snprintf(needle, sizeof(needle), "\n%s ", series); /* a sample line, not HELP/TYPE */
    p = strstr(text, needle);
    if (p)
        v = strtod(p + strlen(needle), NULL);
    free(text);
    return v;
}

static void off_without_url(void **state)
{
    cm_trace_config c = {"", "0.1", 4096, "svc"};
    cm_tracer *t = (cm_tracer *)&c; /* must be overwritten */
    cm_span_ctx ctx = {.sampled = true};
    char err[256];
    (void)state;

    assert_int_equal(cm_tracer_new(&c, NULL, &t, err, sizeof(err)), 0);
    assert_null(t);
    assert_false(cm_trace_on(t));
    assert_false(cm_trace_start(t, TP_SAMPLED, true, &ctx));
    cm_trace_end(t, &ctx, CM_SPAN_SERVER, "x", NULL, NULL, 0, 0); /* nothing, no crash */
    cm_tracer_stop(t);
}

/* A one-shot collector: accepts one connection, reads one request with a
 * Content-Length body, answers 202, keeps the body. */
typedef struct {
    int fd;
    char buf[65536];
    size_t len;
    char *body;
} peer;

static void *peer_main(void *arg)
{
    peer *p = arg;
    int c = accept(p->fd, NULL, NULL);
    size_t want = 0;

    if (c < 0)
        return NULL;
    for (;;) {
        ssize_t k = read(c, p->buf + p->len, sizeof(p->buf) - 1 - p->len);
        if (k <= 0)
            break;
        p->len += (size_t)k;
        p->buf[p->len] = '\0';
        char *end = strstr(p->buf, "\r\n\r\n");
        char *cl = strcasestr(p->buf, "Content-Length:");
        if (end && cl) {
            want = (size_t)(end + 4 - p->buf) + strtoul(cl + 15, NULL, 10);
            if (p->len >= want) {
                p->body = end + 4;
                break;
            }
        }
    }
    static const char ok[] = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n";
    if (write(c, ok, sizeof(ok) - 1) < 0)
        p->body = NULL;
    close(c);
    return NULL;
}

static int listen_any(int *ret_port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *ret_port = ntohs(a.sin_port);
    return fd;
}

static void spans_reach_the_collector_as_zipkin_json(void **state)
{
    peer p = {0};
    pthread_t th;
    char url[64], err[256], tp[56];
    int port;
    cm_metrics *m = new_metrics();
    cm_tracer *t;
    cm_span_ctx root, child;
    (void)state;

    p.fd = listen_any(&port);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    assert_int_equal(pthread_create(&th, NULL, peer_main, &p), 0);
    cm_trace_config c = {url, "1", 64, "test-service"};
    assert_int_equal(cm_tracer_new(&c, m, &t, err, sizeof(err)), 0);
    assert_non_null(t);

    assert_true(cm_trace_start(t, NULL, true, &root)); /* ratio 1: a new, sampled trace */
    assert_string_equal(root.parent_id, "");
    cm_trace_traceparent(&root, tp);
    assert_string_equal(tp + 52, "-01");
    assert_true(cm_trace_start(t, tp, false, &child));
    assert_string_equal(child.trace_id, root.trace_id);
    assert_string_equal(child.parent_id, root.span_id);
    const cm_span_tag tags[] = {{"order.id", "o-1"}, {"skipped", NULL}, {"outcome", "charged"}};
    cm_trace_end(t, &child, CM_SPAN_CONSUMER, "consume orders.created", "kafka", tags, 3, 0);
    cm_trace_end(t, &root, CM_SPAN_SERVER, "POST /orders", NULL, NULL, 0, 0);
    /* unsampled parent: nothing to end, nothing sent */
    assert_false(cm_trace_start(t, TP_UNSAMPLED, false, &child));
    cm_tracer_stop(t); /* sends what is queued */
    pthread_join(th, NULL);
    close(p.fd);

    assert_non_null(p.body);
    assert_non_null(strstr(p.buf, "POST /api/v2/spans HTTP/1.1\r\n"));
    assert_non_null(strcasestr(p.buf, "Content-Type: application/json\r\n"));
    json_error_t e;
    json_t *arr = json_loads(p.body, 0, &e);
    assert_non_null(arr);
    assert_int_equal(json_array_size(arr), 2);
    json_t *s0 = json_array_get(arr, 0), *s1 = json_array_get(arr, 1);
    assert_string_equal(json_string_value(json_object_get(s0, "traceId")), root.trace_id);
    assert_string_equal(json_string_value(json_object_get(s0, "parentId")), root.span_id);
    assert_string_equal(json_string_value(json_object_get(s0, "kind")), "CONSUMER");
    assert_string_equal(json_string_value(json_object_get(s0, "name")), "consume orders.created");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(s0, "localEndpoint"), "serviceName")),
        "test-service");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(s0, "remoteEndpoint"), "serviceName")),
        "kafka");
    json_t *tg = json_object_get(s0, "tags");
    assert_int_equal(json_object_size(tg), 2);
    assert_string_equal(json_string_value(json_object_get(tg, "order.id")), "o-1");
    assert_string_equal(json_string_value(json_object_get(tg, "outcome")), "charged");
    assert_true(json_integer_value(json_object_get(s0, "timestamp")) > 1600000000000000LL);
    assert_true(json_integer_value(json_object_get(s0, "duration")) >= 1);
    assert_string_equal(json_string_value(json_object_get(s1, "id")), root.span_id);
    assert_null(json_object_get(s1, "parentId"));
    assert_string_equal(json_string_value(json_object_get(s1, "kind")), "SERVER");
    json_decref(arr);
    assert_true(metric(m, "orders_spans_sent_total") == 2);
    cm_metrics_free(m);
}

static void full_queue_and_dead_collector_cost_counted_spans(void **state)
{
    char url[64], err[256];
    int port, fd, n = 100;
    cm_metrics *m = new_metrics();
    cm_tracer *t;
    cm_span_ctx ctx;
    (void)state;

    fd = listen_any(&port);
    close(fd); /* a port nobody listens on */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    cm_trace_config c = {url, "1", 16, "test-service"};
    assert_int_equal(cm_tracer_new(&c, m, &t, err, sizeof(err)), 0);
    for (int i = 0; i < n; i++) {
        assert_true(cm_trace_start(t, NULL, true, &ctx));
        cm_trace_end(t, &ctx, CM_SPAN_SERVER, "GET /x", NULL, NULL, 0, 0);
    }
    cm_tracer_stop(t);
    double full = metric(m, "orders_spans_dropped_total{reason=\"queue_full\"}");
    double failed = metric(m, "orders_spans_dropped_total{reason=\"send_failed\"}");
    double stopped = metric(m, "orders_spans_dropped_total{reason=\"stopped\"}");
    /* the sender may have taken one batch of 16 during the loop */
    assert_true(full >= n - 2 * 16);
    assert_true(failed >= 16);
    assert_true(full + failed + (stopped > 0 ? stopped : 0) == n);
    assert_true(metric(m, "orders_spans_sent_total") == 0);
    cm_metrics_free(m);
}

/* The outbox headers of an event: a child traceparent with the parent's
 * flags; the parent span id under the relay's internal key only when the
 * parent is sampled. */
static void outbox_headers_keep_flags_and_parent(void **state)
{
    struct {
        const char *parent;
        const char *flags;
        bool keyed;
    } cases[] = {
        {TP_SAMPLED, "01", true},
        {TP_UNSAMPLED, "00", false},
        {NULL, "01", false}, /* a new trace, as before tracing existed */
        {"junk", "01", false},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *text = NULL, trace[33];
        assert_int_equal(cm_outbox_headers(EV_ORDER_CREATED, cases[i].parent, &text, trace), 0);
        json_t *h = json_loads(text, 0, NULL);
        assert_non_null(h);
        const char *tp = json_string_value(json_object_get(h, "traceparent"));
        assert_non_null(tp);
        assert_true(ev_traceparent_valid(tp, strlen(tp)));
        assert_string_equal(tp + 53, cases[i].flags);
        assert_memory_equal(tp + 3, trace, 32);
        json_t *key = json_object_get(h, "x-orders-parent-span-id");
        if (cases[i].parent && cases[i].keyed) {
            assert_memory_equal(tp + 3, cases[i].parent + 3, 32);       /* same trace */
            assert_memory_not_equal(tp + 36, cases[i].parent + 36, 16); /* new span */
            assert_string_equal(json_string_value(key), "00f067aa0ba902b7");
        } else {
            assert_null(key);
        }
        json_decref(h);
        free(text);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parse_traceparent),
        cmocka_unit_test(sampling_by_trace_id),
        cmocka_unit_test(config_errors_name_the_variable),
        cmocka_unit_test(off_without_url),
        cmocka_unit_test(spans_reach_the_collector_as_zipkin_json),
        cmocka_unit_test(full_queue_and_dead_collector_cost_counted_spans),
        cmocka_unit_test(outbox_headers_keep_flags_and_parent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

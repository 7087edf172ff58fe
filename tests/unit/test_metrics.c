/*
 * test_metrics.c - the Prometheus text output of cm_metrics: HELP/TYPE lines
 * per family, counters that add, gauges that replace, histogram buckets that
 * are cumulative with +Inf, _sum and _count, clearing a gauge, updates to
 * undeclared names being ignored, and label values escaped.
 */
#include "cm_metrics.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static char *render(cm_metrics *m)
{
    char *text = cm_metrics_render(m);
    assert_non_null(text);
    return text;
}

static void counters_add_and_render(void **state)
{
    cm_metrics *m;
    char *text;
    (void)state;
    assert_int_equal(cm_metrics_new(&m), 0);
    cm_metrics_describe(m, "t_records_total", CM_METRIC_COUNTER, "Records.");
    cm_metrics_add(m, "t_records_total", "topic=\"a\"", 1);
    cm_metrics_add(m, "t_records_total", "topic=\"a\"", 2);
    cm_metrics_add(m, "t_records_total", "topic=\"b\"", 5);
    cm_metrics_add(m, "t_undeclared_total", "", 1); /* ignored */
    text = render(m);
    assert_non_null(strstr(text, "# HELP t_records_total Records.\n"
                                 "# TYPE t_records_total counter\n"));
    assert_non_null(strstr(text, "t_records_total{topic=\"a\"} 3\n"));
    assert_non_null(strstr(text, "t_records_total{topic=\"b\"} 5\n"));
    assert_null(strstr(text, "t_undeclared_total"));
    free(text);
    cm_metrics_free(m);
}

static void gauges_replace_and_clear(void **state)
{
    cm_metrics *m;
    char *text;
    (void)state;
    assert_int_equal(cm_metrics_new(&m), 0);
    cm_metrics_describe(m, "t_lag", CM_METRIC_GAUGE, "Lag.");
    cm_metrics_describe(m, "t_ready", CM_METRIC_GAUGE, "Ready.");
    cm_metrics_set(m, "t_lag", "partition=\"0\"", 7);
    cm_metrics_set(m, "t_lag", "partition=\"0\"", 4);
    cm_metrics_set(m, "t_ready", "", 1);
    text = render(m);
    assert_non_null(strstr(text, "t_lag{partition=\"0\"} 4\n"));
    assert_non_null(strstr(text, "t_ready 1\n"));
    free(text);
    cm_metrics_clear(m, "t_lag");
    text = render(m);
    assert_null(strstr(text, "t_lag{"));
    assert_non_null(strstr(text, "# TYPE t_lag gauge\n"));
    assert_non_null(strstr(text, "t_ready 1\n"));
    free(text);
    cm_metrics_free(m);
}

static void histogram_buckets_are_cumulative(void **state)
{
    cm_metrics *m;
    char *text;
    (void)state;
    assert_int_equal(cm_metrics_new(&m), 0);
    cm_metrics_describe(m, "t_seconds", CM_METRIC_HISTOGRAM, "Latency.");
    cm_metrics_observe(m, "t_seconds", "route=\"/x\"", 0.002);
    cm_metrics_observe(m, "t_seconds", "route=\"/x\"", 0.2);
    cm_metrics_observe(m, "t_seconds", "route=\"/x\"", 30);
    cm_metrics_observe(m, "t_seconds", "route=\"/x\"", 61);
    text = render(m);
    assert_non_null(strstr(text, "# TYPE t_seconds histogram\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"0.001\"} 0\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"0.002\"} 1\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"0.2\"} 2\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"10\"} 2\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"30\"} 3\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"60\"} 3\n"));
    assert_non_null(strstr(text, "t_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(text, "t_seconds_count{route=\"/x\"} 4\n"));
    assert_non_null(strstr(text, "t_seconds_sum{route=\"/x\"} 91.20"));
    free(text);
    cm_metrics_free(m);
}

static void expect_label(const char *in, size_t outlen, const char *want)
{
    char out[64];
    assert_true(outlen <= sizeof(out));
    assert_ptr_equal(cm_metrics_label_value(in, out, outlen), out);
    assert_string_equal(out, want);
}

/* Label values escaped as the exposition format says: a client's bytes can
 * neither close the quotes, start a new label or line, nor put invalid
 * UTF-8 into the text. */
static void label_values_are_escaped(void **state)
{
    (void)state;
    expect_label("/orders", 64, "/orders");
    expect_label("X\",route=\"y", 64, "X\\\",route=\\\"y");
    expect_label("a\\b", 64, "a\\\\b");
    expect_label("a\nb", 64, "a\\nb");
    expect_label("t\tab\r\x01\x7f", 64, "t?ab???");
    expect_label("caf\xc3\xa9 \xff", 64, "caf?? ?");
    expect_label(NULL, 64, "");
    expect_label("", 64, "");
    /* cut short, never inside an escape */
    expect_label("abcdef", 4, "abc");
    expect_label("ab\"c", 4, "ab");
    expect_label("a\"c", 4, "a\\\"");
    expect_label("x", 1, "");
}

/* A value escaped this way, rendered, leaves every line of the exposition
 * well formed: one series per line, the value after the closing brace. */
static void escaped_labels_render_on_one_line(void **state)
{
    cm_metrics *m;
    char v[64], labels[128], *text, *line;
    (void)state;
    assert_int_equal(cm_metrics_new(&m), 0);
    cm_metrics_describe(m, "t_requests_total", CM_METRIC_COUNTER, "Requests.");
    snprintf(labels, sizeof(labels), "method=\"%s\"",
             cm_metrics_label_value("X\",route=\"y\n} 1\nevil 2", v, sizeof(v)));
    cm_metrics_add(m, "t_requests_total", labels, 1);
    text = render(m);
    assert_non_null(
        strstr(text, "t_requests_total{method=\"X\\\",route=\\\"y\\n} 1\\nevil 2\"} 1\n"));
    line = strstr(text, "t_requests_total{");
    assert_non_null(line);
    assert_null(strstr(text, "\nevil"));
    free(text);
    cm_metrics_free(m);
}

static void null_registry_is_harmless(void **state)
{
    (void)state;
    cm_metrics_add(NULL, "x", "", 1);
    cm_metrics_set(NULL, "x", "", 1);
    cm_metrics_observe(NULL, "x", "", 1);
    cm_metrics_clear(NULL, "x");
    cm_metrics_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(counters_add_and_render),
        cmocka_unit_test(gauges_replace_and_clear),
        cmocka_unit_test(histogram_buckets_are_cumulative),
        cmocka_unit_test(label_values_are_escaped),
        cmocka_unit_test(escaped_labels_render_on_one_line),
        cmocka_unit_test(null_registry_is_harmless),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

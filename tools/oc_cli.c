/*
 * oc_cli.c - see oc_cli.h.
 */
#include "oc_cli.h"

#include "oc_dlt.h"
#include "tl_cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

volatile sig_atomic_t oc_stop = 0;

void oc_signals_install(void)
{
    tl_signals_install(&oc_stop, false);
}

void oc_opts_default(oc_opts *o)
{
    const char *env = getenv("KAFKA_BOOTSTRAP_SERVERS");

    o->bootstrap = env && *env ? env : "127.0.0.1:9092";
    o->timeout_ms = 10000;
    o->verbose = false;
}

int oc_opts_common(oc_opts *o, int opt, const char *arg)
{
    int64_t v;

    switch (opt) {
    case OC_OPT_BOOTSTRAP:
        if (!*arg) {
            oc_usage("--bootstrap needs HOST:PORT");
            return -1;
        }
        o->bootstrap = arg;
        return 1;
    case OC_OPT_TIMEOUT:
        if (oc_parse_i64(arg, 1, 3600, &v) < 0) {
            oc_usage("--timeout must be a number of seconds between 1 and 3600");
            return -1;
        }
        o->timeout_ms = (int)v * 1000;
        return 1;
    case OC_OPT_VERBOSE:
        o->verbose = true;
        return 1;
    default:
        return 0;
    }
}

int oc_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
              const char *usage, oc_opt_fn fn, void *ctx, oc_opts *o)
{
    int opt, c, li = -1;
    char name[64];

    while ((opt = getopt_long(argc, argv, shortopts, longopts, &li)) != -1) {
        if ((c = oc_opts_common(o, opt, optarg)) != 0) {
            if (c < 0)
                return OC_EXIT_USAGE;
            continue;
        }
        if (opt == 'h') {
            fputs(usage, stdout);
            return OC_EXIT_OK;
        }
        if (opt == '?')
            return oc_usage("unknown option");
        /* The option's name as documented, for messages ("--partitions"). */
        if (li >= 0)
            snprintf(name, sizeof(name), "--%s", longopts[li].name);
        else
            snprintf(name, sizeof(name), "-%c", opt);
        li = -1;
        if ((c = fn(ctx, opt, optarg, name)) >= 0)
            return c;
    }
    if (optind < argc)
        return oc_usage("unexpected argument \"%s\"", argv[optind]);
    return -1;
}

bool oc_is_dlt_topic(const char *topic)
{
    size_t n = strlen(topic), s = strlen(OC_DLT_SUFFIX);
    return n > s && strcmp(topic + n - s, OC_DLT_SUFFIX) == 0;
}

void oc_err(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    tl_vmsg("orderctl", "", fmt, ap);
    va_end(ap);
}

int oc_usage(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    tl_vmsg("orderctl", " (see --help)", fmt, ap);
    va_end(ap);
    return OC_EXIT_USAGE;
}

int oc_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret)
{
    return tl_parse_i64(s, min, max, ret);
}

int64_t oc_now_ms(void)
{
    return tl_clock_ns(CLOCK_REALTIME) / 1000000;
}

int64_t oc_mono_ms(void)
{
    return tl_clock_ns(CLOCK_MONOTONIC) / 1000000;
}

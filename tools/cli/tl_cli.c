/*
 * tl_cli.c - see tl_cli.h.
 */
#include "tl_cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t *stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    *stop_flag = 1;
}

void tl_signals_install(volatile sig_atomic_t *stop, bool ignore_sigpipe)
{
    struct sigaction sa;

    stop_flag = stop;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (ignore_sigpipe) {
        sa.sa_handler = SIG_IGN;
        sigaction(SIGPIPE, &sa, NULL);
    }
}

void tl_vmsg(const char *prog, const char *suffix, const char *fmt, va_list ap)
{
    char buf[2048];

    vsnprintf(buf, sizeof(buf), fmt, ap);
    fprintf(stderr, "%s: %s%s\n", prog, buf, suffix);
}

int tl_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret)
{
    char *end;
    long long v;

    if (!s || !*s || isspace((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -EINVAL;
    *ret = (int64_t)v;
    return 0;
}

int tl_parse_duration(const char *s, int64_t max_s, int64_t *ret_s)
{
    static const struct {
        char unit;
        int64_t secs;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}};
    char num[24];
    size_t n = s ? strlen(s) : 0;
    int64_t mult = 1, v;

    if (n == 0 || n >= sizeof(num))
        return -EINVAL;
    memcpy(num, s, n + 1);
    if (!isdigit((unsigned char)num[n - 1])) {
        mult = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
            if (num[n - 1] == units[i].unit)
                mult = units[i].secs;
        num[--n] = '\0';
    }
    if (mult == 0 || !isdigit((unsigned char)num[0]) || tl_parse_i64(num, 0, max_s / mult, &v) < 0)
        return -EINVAL;
    *ret_s = v * mult;
    return 0;
}

int64_t tl_clock_ns(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

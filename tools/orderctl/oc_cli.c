/*
 * oc_cli.c - see oc_cli.h.
 */
#include "oc_cli.h"

#include "oc_dlt.h"
#include "oc_kafka.h"
#include "tl_cli.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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
    o->bootstrap_set = false;
}

/* One line of a config file: 1 set (or kept), 0 nothing on it, -1 malformed. */
static int config_line(char *line, const char *path, int lineno, bool *secret)
{
    char *k = line, *v, *end;
    size_t n;

    while (isspace((unsigned char)*k))
        k++;
    if (!*k || *k == '#' || *k == ';')
        return 0;
    v = strchr(k, '=');
    if (!v || v == k)
        goto bad;
    *v++ = '\0';
    for (char *c = k; *c; c++)
        if (!(isalnum((unsigned char)*c) || *c == '_') || isdigit((unsigned char)*k))
            goto bad;
    n = strlen(v);
    while (n > 0 && isspace((unsigned char)v[n - 1]))
        v[--n] = '\0';
    while (isspace((unsigned char)*v))
        v++, n--;
    if (n >= 2 && (v[0] == '"' || v[0] == '\'') && v[n - 1] == v[0]) {
        v[n - 1] = '\0';
        v++;
    }
    if (strncmp(k, "KAFKA_", 6) != 0)
        return 0;
    end = k + strlen(k);
    if (end - k > 9 && (strstr(k, "PASSWORD") || strstr(k, "SECRET")) &&
        strcmp(end - 5, "_FILE") != 0)
        *secret = true;
    if (setenv(k, v, 0) < 0) {
        oc_err("%s:%d: could not set %s", path, lineno, k);
        return -1;
    }
    return 1;
bad:
    oc_err("%s:%d: not a KEY=VALUE line", path, lineno);
    return -1;
}

int oc_config_load(const char *path)
{
    FILE *f = fopen(path, "re");
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, r = 0;
    bool secret = false;
    struct stat st;

    if (!f) {
        oc_err("cannot read --config %s: %s", path, strerror(errno));
        return -1;
    }
    while (r == 0 && getline(&line, &cap, f) >= 0) {
        size_t n = strlen(line);

        lineno++;
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = '\0';
        if (config_line(line, path, lineno, &secret) < 0)
            r = -1;
    }
    if (r == 0 && secret && fstat(fileno(f), &st) == 0 && (st.st_mode & 0077))
        oc_err("warning: %s holds a password and is readable by others (chmod 600, or use "
               "KAFKA_SASL_PASSWORD_FILE)",
               path);
    free(line);
    fclose(f);
    return r;
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
        o->bootstrap_set = true;
        return 1;
    case OC_OPT_CONFIG: {
        const char *env;

        if (oc_config_load(arg) < 0)
            return -1;
        env = getenv("KAFKA_BOOTSTRAP_SERVERS");
        if (!o->bootstrap_set && env && *env)
            o->bootstrap = env;
        return 1;
    }
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
    if (o->kafka && oc_kafka_check_env() < 0)
        return OC_EXIT_CONFIG;
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

int oc_write_file(const char *path, const char *text, mode_t mode, bool make_dirs)
{
    char dir[4096], tmp[4200];
    const char *slash = strrchr(path, '/');
    size_t len = strlen(text);
    int fd;

    if (make_dirs && slash && slash != path) {
        if ((size_t)(slash - path) >= sizeof(dir)) {
            oc_err("%s: path too long", path);
            return -1;
        }
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
        /* mkdir -p: each missing folder on the way, 0700 */
        for (char *p = dir + 1;; p++) {
            bool last = *p == '\0';

            if (*p != '/' && !last)
                continue;
            *p = '\0';
            if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                oc_err("could not create %s: %s", dir, strerror(errno));
                return -1;
            }
            if (last)
                break;
            *p = '/';
        }
    }
    if (snprintf(tmp, sizeof(tmp), "%s.tmpXXXXXX", path) >= (int)sizeof(tmp)) {
        oc_err("%s: path too long", path);
        return -1;
    }
    if ((fd = mkstemp(tmp)) < 0) {
        oc_err("could not create %s: %s", tmp, strerror(errno));
        return -1;
    }
    if (fchmod(fd, mode) < 0 || write(fd, text, len) != (ssize_t)len || fsync(fd) < 0) {
        oc_err("could not write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        oc_err("could not write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

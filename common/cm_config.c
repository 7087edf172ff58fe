/*
 * cm_config.c - see cm_config.h.
 */
#include "cm_config.h"

#include "cm_log.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

extern char **environ;

static int parse_ll(const char *s, long long *ret)
{
    char *end;
    long long v;

    if (!*s || isspace((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *ret = v;
    return 0;
}

static int parse_duration(const char *s, long long *ret)
{
    static const struct {
        const char *suffix;
        long long mult;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"", 1}};
    char *end;
    long long v;

    if (!*s || !isdigit((unsigned char)*s))
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0)
        return -EINVAL;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].suffix) == 0) {
            if (v > 0 && v > (long long)(9e15 / (double)units[i].mult))
                return -EINVAL;
            *ret = v * units[i].mult;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_bool(const char *s, bool *ret)
{
    static const char *yes[] = {"1", "true", "yes", "on"};
    static const char *no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *ret = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *ret = false;
            return 0;
        }
    }
    return -EINVAL;
}

static int load_one(const cm_cfg_item *it, void *cfg, char *err, size_t errlen)
{
    const char *env = getenv(it->name);
    const char *v = env ? env : it->def;
    char *slot = (char *)cfg + it->offset;
    long long n;
    bool b;

    if (!v) {
        snprintf(err, errlen, "missing required %s (%s)", it->name, it->help);
        return -EINVAL;
    }
    switch (it->type) {
    case CM_CFG_STRING:
        *(const char **)slot = v;
        return 0;
    case CM_CFG_BOOL:
        if (parse_bool(v, &b) < 0) {
            snprintf(err, errlen, "invalid %s=\"%s\": must be true or false", it->name, v);
            return -EINVAL;
        }
        *(bool *)slot = b;
        return 0;
    case CM_CFG_INT:
    case CM_CFG_DURATION:
        if ((it->type == CM_CFG_INT ? parse_ll(v, &n) : parse_duration(v, &n)) < 0 || n < it->min ||
            n > it->max) {
            snprintf(err, errlen, "invalid %s=\"%s\": must be %s between %lld and %lld%s", it->name,
                     v, it->type == CM_CFG_INT ? "an integer" : "a duration", it->min, it->max,
                     it->type == CM_CFG_INT ? "" : " ms (units ms, s, m, h)");
            return -EINVAL;
        }
        *(long long *)slot = n;
        return 0;
    }
    return -EINVAL;
}

int cm_config_load(const cm_cfg_item *items, size_t n, void *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        int r = load_one(&items[i], cfg, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

void cm_config_mask(const char *s, char *out, size_t outlen)
{
    const char *scheme = strstr(s, "://");
    const char *at, *colon, *pw;

    snprintf(out, outlen, "%s", s);
    if (scheme) {
        at = strchr(scheme + 3, '@');
        colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
        if (colon)
            snprintf(out, outlen, "%.*s:***%s", (int)(colon - s), s, at);
        return;
    }
    pw = strstr(s, "password=");
    if (pw) {
        const char *end = pw + 9;
        while (*end && !isspace((unsigned char)*end))
            end++;
        snprintf(out, outlen, "%.*spassword=***%s", (int)(pw - s), s, end);
    }
}

void cm_config_log(const cm_cfg_item *items, size_t n, const void *cfg)
{
    for (size_t i = 0; i < n; i++) {
        const cm_cfg_item *it = &items[i];
        const char *slot = (const char *)cfg + it->offset;
        char buf[512];

        switch (it->type) {
        case CM_CFG_STRING:
            if (it->secret)
                snprintf(buf, sizeof(buf), "***");
            else
                cm_config_mask(*(const char *const *)slot, buf, sizeof(buf));
            break;
        case CM_CFG_BOOL:
            snprintf(buf, sizeof(buf), "%s", *(const bool *)slot ? "true" : "false");
            break;
        default:
            snprintf(buf, sizeof(buf), "%lld", *(const long long *)slot);
        }
        log_info("config %s=\"%s\"", it->name, buf);
    }
}

int cm_config_kafka_each(int (*fn)(void *ud, const char *var, const char *prop, const char *value),
                         void *ud)
{
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        char var[256], prop[256];
        size_t len;
        int r;

        if (strncmp(*e, "KAFKA_", 6) != 0 || !eq)
            continue;
        len = (size_t)(eq - *e);
        if (len >= sizeof(var) || len == 6)
            continue;
        memcpy(var, *e, len);
        var[len] = '\0';
        for (size_t i = 6; i <= len; i++)
            prop[i - 6] = var[i] == '_' ? '.' : (char)tolower((unsigned char)var[i]);
        r = fn(ud, var, prop, eq + 1);
        if (r != 0)
            return r;
    }
    return 0;
}

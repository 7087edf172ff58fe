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

/* KAFKA_* names that are never librdkafka properties: the variables of
 * Kafka's own launcher (bin/kafka-run-class.sh, kafka-server-start.sh) and of
 * our dev stack (deploy/kafka). They are set on hosts that also run Kafka or
 * its tools, so a daemon passes over them instead of refusing to start. */
static const struct {
    const char *var;
    const char *owner;
} kafka_ignored[] = {
    {"KAFKA_HEAP_OPTS", "kafka launcher"},
    {"KAFKA_OPTS", "kafka launcher"},
    {"KAFKA_JVM_PERFORMANCE_OPTS", "kafka launcher"},
    {"KAFKA_GC_LOG_OPTS", "kafka launcher"},
    {"KAFKA_JMX_OPTS", "kafka launcher"},
    {"KAFKA_LOG4J_OPTS", "kafka launcher"},
    {"KAFKA_LOG4J_CMD_OPTS", "kafka launcher"},
    {"KAFKA_DEBUG", "kafka launcher"},
    {"KAFKA_MODE", "kafka launcher"},
    {"KAFKA_VERSION", "dev stack"},
    {"KAFKA_LIBS_DIR", "dev stack"},
    {"KAFKA_EXTRA_PROPERTIES", "dev stack"},
    {"KAFKA_START_TIMEOUT", "dev stack"},
    {"KAFKA_STOP_TIMEOUT", "dev stack"},
};

const char *cm_config_kafka_ignored(const char *var)
{
    for (size_t i = 0; i < sizeof(kafka_ignored) / sizeof(kafka_ignored[0]); i++)
        if (strcmp(var, kafka_ignored[i].var) == 0)
            return kafka_ignored[i].owner;
    return NULL;
}

/* Splits environment entry e into its variable name (into var) and value if
 * it is a KAFKA_<NAME>=... entry that fits; returns NULL otherwise. */
static const char *kafka_var(const char *e, char *var, size_t varlen)
{
    const char *eq = strchr(e, '=');
    size_t len;

    if (strncmp(e, "KAFKA_", 6) != 0 || !eq)
        return NULL;
    len = (size_t)(eq - e);
    if (len >= varlen || len == 6)
        return NULL;
    memcpy(var, e, len);
    var[len] = '\0';
    return eq + 1;
}

int cm_config_kafka_each(int (*fn)(void *ud, const char *var, const char *prop, const char *value),
                         void *ud)
{
    for (char **e = environ; e && *e; e++) {
        char var[256], prop[256];
        const char *value = kafka_var(*e, var, sizeof(var));
        size_t len;
        int r;

        if (!value || cm_config_kafka_ignored(var))
            continue;
        len = strlen(var);
        for (size_t i = 6; i <= len; i++)
            prop[i - 6] = var[i] == '_' ? '.' : (char)tolower((unsigned char)var[i]);
        r = fn(ud, var, prop, value);
        if (r != 0)
            return r;
    }
    return 0;
}

void cm_config_kafka_each_ignored(void (*fn)(void *ud, const char *var, const char *owner),
                                  void *ud)
{
    for (char **e = environ; e && *e; e++) {
        char var[256];
        const char *owner;

        if (kafka_var(*e, var, sizeof(var)) && (owner = cm_config_kafka_ignored(var)))
            fn(ud, var, owner);
    }
}

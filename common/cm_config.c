/*
 * cm_config.c - see cm_config.h.
 */
#include "cm_config.h"

#include "cm_log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* Case-insensitive: does s contain needle? */
static bool contains_ci(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);

    for (size_t i = 0; i + k <= n; i++)
        if (strncasecmp(s + i, needle, k) == 0)
            return true;
    return false;
}

static bool ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

bool cm_config_secret_name(const char *name)
{
    static const char *const words[] = {"password", "secret", "passphrase", "oauthbearer.config",
                                        "oauthbearer_config"};
    size_t n = strlen(name);

    /* KAFKA_SSL_KEY_PASSWORD_FILE, HTTP_TOKENS_FILE, *.location: paths */
    if (ends_with_ci(name, "_file") || ends_with_ci(name, ".file") ||
        ends_with_ci(name, "location"))
        return false;
    if (ends_with_ci(name, "pem"))
        return true;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (contains_ci(name, n, words[i]))
            return true;
    return false;
}

/* Appends n bytes of s to out (size outlen, used *len), truncating. */
static void put(char *out, size_t outlen, size_t *len, const char *s, size_t n)
{
    if (*len + 1 >= outlen)
        return;
    if (n > outlen - 1 - *len)
        n = outlen - 1 - *len;
    memcpy(out + *len, s, n);
    *len += n;
    out[*len] = '\0';
}

/* A URI: postgresql://user:password@host/db?password=x&sslpassword=y. libpq
 * looks for the '@' that ends the credentials up to the first '/' only, so
 * a password may hold a raw '?' (or '#'): the credentials end at the last
 * '@' before the first '/'. */
static void mask_uri(const char *s, const char *scheme, char *out, size_t outlen, size_t *len)
{
    const char *auth = scheme + 3, *end = auth + strcspn(auth, "/"), *at = NULL, *q;

    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p;
    q = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (q) {
        put(out, outlen, len, s, (size_t)(q + 1 - s));
        put(out, outlen, len, "***", 3);
        s = at;
    }
    q = strchr(s, '?');
    if (!q) {
        put(out, outlen, len, s, strlen(s));
        return;
    }
    put(out, outlen, len, s, (size_t)(q + 1 - s));
    for (s = q + 1; *s;) {
        size_t n = strcspn(s, "&"), k = strcspn(s, "=&");
        if (k < n && contains_ci(s, k, "password")) {
            put(out, outlen, len, s, k + 1);
            put(out, outlen, len, "***", 3);
        } else {
            put(out, outlen, len, s, n);
        }
        s += n;
        if (*s == '&')
            put(out, outlen, len, s++, 1);
    }
}

/* key = value pairs, a value bare (backslash escapes) or in single quotes
 * ('x y', \' and \\ inside): libpq's conninfo syntax. */
static void mask_conninfo(const char *s, char *out, size_t outlen, size_t *len)
{
    while (*s) {
        const char *key = s, *v;
        size_t klen;

        while (isspace((unsigned char)*key))
            key++;
        klen = strcspn(key, "= \t\n\r\f\v");
        v = key + klen;
        while (isspace((unsigned char)*v))
            v++;
        if (klen == 0 || *v != '=') {
            /* not conninfo after all: hide everything from a "password" on */
            const char *p = s;
            while (*p && strncasecmp(p, "password", 8) != 0)
                p++;
            put(out, outlen, len, s, (size_t)(p - s));
            if (*p)
                put(out, outlen, len, "***", 3);
            return;
        }
        v++;
        while (isspace((unsigned char)*v))
            v++;
        put(out, outlen, len, s, (size_t)(v - s));
        s = v;
        if (*s == '\'') {
            for (s++; *s && *s != '\''; s++)
                if (*s == '\\' && s[1])
                    s++;
            if (*s)
                s++;
        } else {
            for (; *s && !isspace((unsigned char)*s); s++)
                if (*s == '\\' && s[1])
                    s++;
        }
        if (contains_ci(key, klen, "password")) {
            put(out, outlen, len, "***", 3);
        } else if (contains_ci(v, (size_t)(s - v), "://")) {
            /* a URI as a value (dbname=postgresql://u:pw@h/db): masked too */
            char uri[512];
            snprintf(uri, sizeof(uri), "%.*s", (int)(s - v), v);
            mask_uri(uri, strstr(uri, "://"), out, outlen, len);
        } else {
            put(out, outlen, len, v, (size_t)(s - v));
        }
    }
}

void cm_config_mask(const char *s, char *out, size_t outlen)
{
    const char *scheme = strstr(s, "://");
    size_t len = 0;

    if (outlen == 0)
        return;
    out[0] = '\0';
    if (scheme && strcspn(s, "= \t'") > (size_t)(scheme - s))
        mask_uri(s, scheme, out, outlen, &len);
    else
        mask_conninfo(s, out, outlen, &len);
}

void cm_config_mask_value(const char *name, const char *value, char *out, size_t outlen)
{
    if (cm_config_secret_name(name))
        snprintf(out, outlen, "***");
    else if (ends_with_ci(name, "_file") || ends_with_ci(name, ".file") ||
             ends_with_ci(name, "location"))
        snprintf(out, outlen, "%s", value); /* a path, shown as it is */
    else
        cm_config_mask(value, out, outlen);
}

/* Secret values seen so far (from KAFKA_* variables with a secret name and
 * from every KAFKA_*_FILE), for cm_config_redact. */
static struct {
    pthread_mutex_t lock;
    char *values[CM_CONFIG_SECRETS_MAX];
    size_t n;
} secrets = {.lock = PTHREAD_MUTEX_INITIALIZER};

void cm_config_secret_add(const char *value)
{
    pthread_mutex_lock(&secrets.lock);
    if (strlen(value) >= CM_CONFIG_SECRET_MIN) {
        bool known = false;
        for (size_t i = 0; i < secrets.n && !known; i++)
            known = strcmp(secrets.values[i], value) == 0;
        if (!known && secrets.n < CM_CONFIG_SECRETS_MAX &&
            (secrets.values[secrets.n] = strdup(value)))
            secrets.n++;
    }
    pthread_mutex_unlock(&secrets.lock);
}

void cm_config_redact(const char *s, char *out, size_t outlen)
{
    size_t len = 0;

    if (outlen == 0)
        return;
    out[0] = '\0';
    pthread_mutex_lock(&secrets.lock);
    while (*s) {
        size_t hit = 0;
        for (size_t i = 0; i < secrets.n && !hit; i++) {
            size_t k = strlen(secrets.values[i]);
            if (strncmp(s, secrets.values[i], k) == 0)
                hit = k;
        }
        if (hit) {
            put(out, outlen, &len, "***", 3);
            s += hit;
        } else {
            put(out, outlen, &len, s++, 1);
        }
    }
    pthread_mutex_unlock(&secrets.lock);
}

void cm_config_log(const cm_cfg_item *items, size_t n, const void *cfg)
{
    for (size_t i = 0; i < n; i++) {
        const cm_cfg_item *it = &items[i];
        const char *slot = (const char *)cfg + it->offset;
        char buf[512];

        switch (it->type) {
        case CM_CFG_STRING:
            if (it->secret || cm_config_secret_name(it->name))
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

/* Reads the secret file of variable var into buf (CM_CONFIG_FILE_MAX + 1
 * bytes), trailing newlines stripped. */
static int read_secret_file(const char *var, const char *path, char *buf, char *err, size_t errlen)
{
    struct stat st;
    size_t len = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

    if (fd < 0) {
        snprintf(err, errlen, "cannot read %s=\"%s\": %s", var, path, strerror(errno));
        return -EINVAL;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "cannot read %s=\"%s\": not a regular file", var, path);
        close(fd);
        return -EINVAL;
    }
    while (len <= CM_CONFIG_FILE_MAX &&
           (n = read(fd, buf + len, CM_CONFIG_FILE_MAX + 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read %s=\"%s\": %s", var, path, strerror(errno));
            close(fd);
            return -EINVAL;
        }
        len += (size_t)n;
    }
    close(fd);
    if (len > CM_CONFIG_FILE_MAX) {
        snprintf(err, errlen, "%s=\"%s\": the file is larger than %d bytes", var, path,
                 CM_CONFIG_FILE_MAX);
        return -EINVAL;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    buf[len] = '\0';
    if (len == 0 || memchr(buf, '\0', len)) {
        snprintf(err, errlen, "%s=\"%s\": the file is %s", var, path,
                 len ? "binary (holds a NUL byte)" : "empty");
        return -EINVAL;
    }
    return 0;
}

int cm_config_kafka_each(int (*fn)(void *ud, const char *var, const char *prop, const char *value),
                         void *ud, char *err, size_t errlen)
{
    char *buf = NULL;
    int r = 0;

    for (char **e = environ; e && *e && r == 0; e++) {
        char var[256], base[256], prop[256];
        const char *value = kafka_var(*e, var, sizeof(var));
        size_t len;

        if (!value || cm_config_kafka_ignored(var))
            continue;
        len = strlen(var);
        memcpy(base, var, len + 1);
        if (len > 6 + 5 && strcmp(var + len - 5, "_FILE") == 0) {
            /* KAFKA_<NAME>_FILE=path: property <name> = the file's contents */
            len -= 5;
            base[len] = '\0';
            if (getenv(base)) {
                snprintf(err, errlen, "both %s and %s are set: set only one of them", base, var);
                r = -EINVAL;
                break;
            }
            if (!buf && !(buf = malloc(CM_CONFIG_FILE_MAX + 1))) {
                snprintf(err, errlen, "out of memory reading %s", var);
                r = -ENOMEM;
                break;
            }
            if ((r = read_secret_file(var, value, buf, err, errlen)) < 0)
                break;
            value = buf;
            cm_config_secret_add(value);
        } else if (cm_config_secret_name(var)) {
            cm_config_secret_add(value);
        }
        for (size_t i = 6; i <= len; i++)
            prop[i - 6] = base[i] == '_' ? '.' : (char)tolower((unsigned char)base[i]);
        r = fn(ud, var, prop, value);
    }
    if (buf) {
        explicit_bzero(buf, CM_CONFIG_FILE_MAX + 1);
        free(buf);
    }
    return r;
}

void cm_config_kafka_log(void)
{
    for (char **e = environ; e && *e; e++) {
        char var[256], buf[512];
        const char *value = kafka_var(*e, var, sizeof(var));

        if (!value || cm_config_kafka_ignored(var))
            continue;
        cm_config_mask_value(var, value, buf, sizeof(buf));
        log_info("config %s=\"%s\"%s", var, buf,
                 ends_with_ci(var, "_file") ? " (the property's value is read from the file)" : "");
    }
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

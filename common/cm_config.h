/*
 * cm_config.h - configuration as one declarative table per daemon.
 *
 * Each entry names an environment variable, its type, default and limits, and
 * where in the caller's struct the value goes. cm_config_load() reads the
 * environment once at start-up and fails with a message naming the first bad
 * variable. String values point into the environment or at the default; they
 * are never freed. Librdkafka properties are not in the table: every variable
 * KAFKA_<NAME> is passed through as property <name> (lowercase, '_' -> '.'),
 * except a short list of Kafka's launcher and dev stack variables.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    CM_CFG_STRING,   /* const char * */
    CM_CFG_INT,      /* long long, within [min, max] */
    CM_CFG_BOOL,     /* bool: true/false/yes/no/1/0 */
    CM_CFG_DURATION, /* long long milliseconds: "250ms", "2s", "1m", or a bare number of ms */
} cm_cfg_type;

typedef struct {
    const char *name; /* environment variable */
    cm_cfg_type type;
    const char *def;    /* default as text; NULL = required */
    long long min, max; /* for INT and DURATION */
    size_t offset;      /* offsetof() in the caller's struct */
    bool secret;        /* masked when printed */
    const char *help;   /* one line for the configuration reference */
} cm_cfg_item;

/* Loads every item into cfg. Returns 0, or -EINVAL with a message in err
 * ("invalid HTTP_PORT=\"x\": must be an integer between 1 and 65535"). */
int cm_config_load(const cm_cfg_item *items, size_t n, void *cfg, char *err, size_t errlen);

/* Logs every value at info level, secrets masked: an item flagged secret or
 * with a secret name (cm_config_secret_name) as "***", passwords inside
 * connection strings (cm_config_mask). */
void cm_config_log(const cm_cfg_item *items, size_t n, const void *cfg);

/* Largest file a KAFKA_<NAME>_FILE variable may name (bytes). */
#define CM_CONFIG_FILE_MAX 65536

/* Visits every KAFKA_* environment variable as (variable, property, value),
 * except the ignored ones (cm_config_kafka_ignored). KAFKA_<NAME>_FILE=path
 * is visited as property <name> with the file's contents as value (trailing
 * newlines stripped; at most CM_CONFIG_FILE_MAX bytes, not empty): how
 * secrets such as systemd credentials reach librdkafka without being in the
 * environment. Setting both KAFKA_<NAME> and KAFKA_<NAME>_FILE, or naming a
 * file that cannot be read, is an error: -EINVAL with a message naming the
 * variable in err. Every secret value seen (a _FILE's contents, a variable
 * with a secret name, cm_config_secret_name) is added to the redaction list
 * (cm_config_redact). Stops at and returns the first non-zero return of fn
 * (fn writes its own message then). */
int cm_config_kafka_each(int (*fn)(void *ud, const char *var, const char *prop, const char *value),
                         void *ud, char *err, size_t errlen);

/* Logs every passed-through KAFKA_* variable at info level, secrets masked
 * (a _FILE variable shows its path, never the file's contents). */
void cm_config_kafka_log(void);

/* Returns who owns var ("kafka launcher", "dev stack") if it is one of the
 * KAFKA_* variables that are never librdkafka properties (KAFKA_HEAP_OPTS,
 * KAFKA_OPTS, KAFKA_LIBS_DIR, ...: the list is in cm_config.c and the
 * README), else NULL. var is the bare name, without "=value". */
const char *cm_config_kafka_ignored(const char *var);

/* Calls fn once for every ignored KAFKA_* variable set in the environment, so
 * that the caller can say that it passed over it. */
void cm_config_kafka_each_ignored(void (*fn)(void *ud, const char *var, const char *owner),
                                  void *ud);

/* Copies s into out with the passwords of a libpq connection string
 * replaced by "***": a URI's "user:password@" and "?password=..." query
 * parameters, a conninfo's "password = value" (bare or 'quoted \' value'),
 * and every other key whose name contains "password" (sslpassword). */
void cm_config_mask(const char *s, char *out, size_t outlen);

/* True if a variable or property of this name holds a secret, so that its
 * value is never printed: the name contains "password", "secret",
 * "passphrase" or "oauthbearer.config", or ends in "pem" (ssl.key.pem), case
 * insensitive; names ending in _FILE, .file or location name a path and are
 * not secret themselves. */
bool cm_config_secret_name(const char *name);

/* "***" for a secret name, a path (names ending in _FILE, .file, location)
 * as it is, else value through cm_config_mask. */
void cm_config_mask_value(const char *name, const char *value, char *out, size_t outlen);

/* Secret values shorter than this are not redacted inside free text (they
 * would match everywhere); the value of a secret name is masked anyway. */
#define CM_CONFIG_SECRET_MIN 4
#define CM_CONFIG_SECRETS_MAX 32

/* Adds value to the list that cm_config_redact hides (thread-safe; copies). */
void cm_config_secret_add(const char *value);

/* Copies s into out with every occurrence of a known secret value replaced
 * by "***": for text that others wrote, such as librdkafka's log lines. */
void cm_config_redact(const char *s, char *out, size_t outlen);

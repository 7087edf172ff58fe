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

/* Logs every value at info level, secrets masked (passwords inside URLs too). */
void cm_config_log(const cm_cfg_item *items, size_t n, const void *cfg);

/* Visits every KAFKA_* environment variable as (variable, property, value),
 * except the ignored ones (cm_config_kafka_ignored). Stops at and returns the
 * first non-zero return of fn. */
int cm_config_kafka_each(int (*fn)(void *ud, const char *var, const char *prop, const char *value),
                         void *ud);

/* Returns who owns var ("kafka launcher", "dev stack") if it is one of the
 * KAFKA_* variables that are never librdkafka properties (KAFKA_HEAP_OPTS,
 * KAFKA_OPTS, KAFKA_LIBS_DIR, ...: the list is in cm_config.c and the
 * README), else NULL. var is the bare name, without "=value". */
const char *cm_config_kafka_ignored(const char *var);

/* Calls fn once for every ignored KAFKA_* variable set in the environment, so
 * that the caller can say that it passed over it. */
void cm_config_kafka_each_ignored(void (*fn)(void *ud, const char *var, const char *owner),
                                  void *ud);

/* Copies s into out with any ":password@" of a URL or "password=" of a
 * conninfo replaced by "***". */
void cm_config_mask(const char *s, char *out, size_t outlen);

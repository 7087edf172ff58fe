/*
 * oc_cli.h - what every orderctl command shares: exit codes, the global
 * options, the stop flag, error output and strict number parsing.
 *
 * Commands print results on stdout and diagnostics on stderr, prefixed
 * "orderctl: ", lowercase, no trailing period.
 */
#pragma once

#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Exit codes of every command (documented in each --help). */
enum {
    OC_EXIT_OK = 0,           /* done, nothing to report */
    OC_EXIT_FINDING = 1,      /* done, but found something: depth above threshold, drift, ... */
    OC_EXIT_USAGE = 2,        /* bad command line */
    OC_EXIT_INFRA = 3,        /* broker unreachable, topic missing, request failed */
    OC_EXIT_UNAVAILABLE = 69, /* order, orders stuck: a daemon or the brokers unreachable */
    OC_EXIT_NOPERM = 77,      /* order, orders stuck: a daemon refused the token */
    OC_EXIT_CONFIG = 78, /* a KAFKA_* variable is unknown or invalid (the daemons' EX_CONFIG) */
};

/* Options that every command accepts. */
typedef struct {
    const char *bootstrap; /* --bootstrap, else $KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092 */
    int timeout_ms;        /* --timeout: deadline of each broker request */
    bool verbose;          /* --verbose: librdkafka's own log lines on stderr */
    bool bootstrap_set;    /* --bootstrap given: --config does not change it */
    bool kafka;            /* the command talks to Kafka: oc_getopt checks KAFKA_* */
} oc_opts;

/* Set by SIGINT/SIGTERM; the only mutable global of the program. */
extern volatile sig_atomic_t oc_stop;

/* Installs the SIGINT/SIGTERM handler that sets oc_stop. */
void oc_signals_install(void);

/* Reads the KAFKA_* lines of a KEY=VALUE file (systemd EnvironmentFile
 * syntax: blank lines, '#'/';' comments, optionally quoted values) into the
 * environment; variables already set keep their value. Returns 0, or -1
 * (reported: unreadable file, malformed line). */
int oc_config_load(const char *path);

/* Fills o with the defaults (environment included). */
void oc_opts_default(oc_opts *o);

/* Handles an option that every command accepts. Returns 1 if opt was one
 * (and applied it), 0 if not, -1 on a bad value (already reported). */
int oc_opts_common(oc_opts *o, int opt, const char *arg);

/* The getopt_long entries and help text of the common options. Commands
 * append OC_COMMON_LONGOPTS to their table; the values are >= 0x100. */
#define OC_OPT_BOOTSTRAP 0x100
#define OC_OPT_TIMEOUT 0x101
#define OC_OPT_VERBOSE 0x102
#define OC_OPT_CONFIG 0x103
#define OC_COMMON_LONGOPTS                                                                         \
    {"bootstrap", required_argument, NULL, OC_OPT_BOOTSTRAP},                                      \
        {"config", required_argument, NULL, OC_OPT_CONFIG},                                        \
        {"timeout", required_argument, NULL, OC_OPT_TIMEOUT},                                      \
        {"verbose", no_argument, NULL, OC_OPT_VERBOSE},                                            \
    {                                                                                              \
        "help", no_argument, NULL, 'h'                                                             \
    }
#define OC_COMMON_HELP                                                                             \
    "Common options:\n"                                                                            \
    "  --bootstrap HOST:PORT[,...]  brokers (default $KAFKA_BOOTSTRAP_SERVERS, else\n"             \
    "                               127.0.0.1:9092); KAFKA_<PROPERTY> variables pass\n"            \
    "                               librdkafka properties through (KAFKA_SECURITY_PROTOCOL=...)\n" \
    "  --config FILE                KAFKA_*=VALUE lines (a daemon's EnvironmentFile: '#'\n"        \
    "                               comments, optional quotes; other names are skipped);\n"        \
    "                               a variable already set in the environment wins\n"              \
    "  --timeout SECONDS            deadline of each broker request (default 10)\n"                \
    "  --verbose                    show librdkafka's log lines\n"                                 \
    "  --help                       this text\n"
#define OC_EXIT_HELP                                                                               \
    "Exit status: 0 ok, 1 finding (see above), 2 usage error, 3 broker or infrastructure\n"        \
    "error, 78 configuration error (an unknown or invalid KAFKA_* variable).\n"

/* A command's own option: applies opt (arg is its value, name the option's
 * documented name, e.g. "--partitions") to ctx; returns -1 to go on or an exit code to stop with.
 */
typedef int (*oc_opt_fn)(void *ctx, int opt, const char *arg, const char *name);

/* The option loop of every command: common options into o, --help prints
 * usage and stops with OC_EXIT_OK, unknown options and stray arguments are
 * usage errors, the rest goes to fn. Then, for a command that talks to Kafka
 * (o->kafka), the KAFKA_* environment (--config included) is checked as the
 * daemons check theirs: an unknown or invalid variable is OC_EXIT_CONFIG,
 * reported, before any connection. Returns -1 when parsing went through,
 * else the exit code to stop with. */
int oc_getopt(int argc, char **argv, const char *shortopts, const struct option *longopts,
              const char *usage, oc_opt_fn fn, void *ctx, oc_opts *o);

/* True if topic names a dead-letter topic ("<topic>.DLT"). */
bool oc_is_dlt_topic(const char *topic);

/* Writes text to path atomically (temporary file, fsync, rename) with mode;
 * with make_dirs, makes missing folders on the way (0700). 0 or -1
 * (reported): a daemon reading the file never sees half of it. */
int oc_write_file(const char *path, const char *text, mode_t mode, bool make_dirs);

/* Prints "orderctl: <message>\n" on stderr. */
void oc_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Reports a usage error ("orderctl: <message> (see --help)") and returns
 * OC_EXIT_USAGE, so that "return oc_usage(...)" fails in one step. */
int oc_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Parses a decimal integer within [min, max], the whole string. Returns 0 or
 * -EINVAL (nothing reported). */
int oc_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret);

/* Milliseconds since the epoch (wall clock) and on the monotonic clock. */
int64_t oc_now_ms(void);
int64_t oc_mono_ms(void);

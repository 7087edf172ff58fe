/*
 * tl_cli.h - what the command line tools (orderctl, orders-bench) share:
 * the stop flag's signal handling, "<prog>: message" errors, strict number
 * parsing and clock readings.
 */
#pragma once

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* SIGINT and SIGTERM set *stop to 1; SIGPIPE is ignored when asked (a tool
 * that writes to sockets). stop must have static storage. */
void tl_signals_install(volatile sig_atomic_t *stop, bool ignore_sigpipe);

/* Prints "<prog>: <message><suffix>\n" on stderr. */
void tl_vmsg(const char *prog, const char *suffix, const char *fmt, va_list ap);

/* Parses a whole decimal integer within [min, max] (no sign-less junk, no
 * leading space). Returns 0 or -EINVAL; *ret is set only on success. */
int tl_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret);

/* Parses a duration: a whole number followed by a unit, s (seconds), m
 * (minutes), h (hours) or d (days), or a bare number of seconds: "30s",
 * "5m", "1h", "90". Sets *ret_s to seconds, at most max_s. Returns 0 or
 * -EINVAL; *ret_s is set only on success. */
int tl_parse_duration(const char *s, int64_t max_s, int64_t *ret_s);

/* The clock id's reading in nanoseconds. */
int64_t tl_clock_ns(clockid_t id);

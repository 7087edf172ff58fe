/*
 * ob_report.h - the results of a run as a text table (stdout) and as JSON
 * (--json FILE), with the processes grouped by label.
 */
#pragma once

#include "ob_count.h"
#include "ob_proc.h"
#include "ob_stats.h"

#include <stdio.h>

typedef struct {
    const ob_run *run;
    const ob_results *res;
    const ob_procs *procs;
    const ob_requests *requests; /* --requests: counted, else not taken */
    const char
        *dbname; /* the orders database's name (never the conninfo: it may hold a password) */
    double cpu_window_s; /* wall time between the two process samples */
    int exit_status;
    char started_at[40]; /* t0, RFC 3339 UTC */
} ob_report;

/* Processes with the same label, summed; and the PostgreSQL processes that
 * exited during the run as a row of their own. */
typedef struct {
    char label[96];
    ob_proc_kind kind;
    bool counted;
    int pids;
    int64_t cpu_us;
    int64_t wakeups;      /* sum over its processes; -1 if any could not be read */
    long rss_kb, anon_kb; /* sums; -1 if none known */
} ob_group;

#define OB_GROUPS_MAX 64

/* Fills out with the groups (kind order, then first appearance); returns how many. */
size_t ob_report_groups(const ob_procs *ps, ob_group *out, size_t max);

/* Wake-ups of every counted process together (-1 if one could not be read). */
int64_t ob_report_wakeups_total(const ob_procs *ps);

/* CPU of every counted process together, µs. */
int64_t ob_report_cpu_total_us(const ob_procs *ps);

/* "open loop at 300 orders/s, 3000 orders, 16 connections" and the like. */
void ob_report_mode(const ob_run *run, char *buf, size_t len);

void ob_report_text(const ob_report *r, FILE *out);

/* Writes the JSON file. Returns 0 or OB_EXIT_INFRA (reported). */
int ob_report_json(const ob_report *r, const char *path);

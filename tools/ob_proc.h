/*
 * ob_proc.h - the processes a run costs, and what they used: CPU time
 * (utime+stime of /proc/<pid>/stat, the delta between the start and the end
 * of the run) and memory at the end (VmRSS, RssAnon of /proc/<pid>/status).
 *
 * Found at the start: the three daemons (--pids, else the process listening
 * on each URL's port, else by process name), the Kafka broker (--broker-pid,
 * else the java process running kafka.Kafka that order-service is connected
 * to), every PostgreSQL process (name starting with "postgres") and this
 * tool. At the end PostgreSQL processes are looked for again: those that
 * appeared during the run count from zero; those that exited during the run
 * are counted through the postmaster's cutime+cstime (the CPU of children it
 * reaped) minus what they had used before the start.
 *
 * Backends are named after the client at the other end of their TCP
 * connection ("postgres backend of payment-service"); backends of clients
 * that are not part of the run (another stack on the same server) are
 * listed but not counted in the total.
 */
#pragma once

#include "ob_run.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    OB_PROC_DAEMON,
    OB_PROC_BROKER,
    OB_PROC_POSTGRES,
    OB_PROC_SELF,
} ob_proc_kind;

typedef struct {
    int pid;
    ob_proc_kind kind;
    char label[96]; /* "order-service", "postgres backend of order-service", ... */
    bool counted;   /* part of the all-processes total */
    bool at_start, at_end;
    unsigned long long starttime; /* to tell a reused pid */
    int64_t cpu0_us, cpu1_us;     /* utime+stime at the start and the end */
    int64_t child0_us, child1_us; /* cutime+cstime: reaped children */
    long rss_kb, anon_kb;         /* at the end; -1 if unknown */
} ob_proc;

typedef struct {
    ob_proc *v;
    size_t n, cap;
    const ob_run *run;
    const char *orders_dbname; /* order-service's database: its backends are the run's */
    int self_backend;          /* the backend of this tool's own connection */
    int order_service_pid;     /* 0 if not found */
    int64_t exited_us;         /* PostgreSQL processes that exited during the run */
    int nexited;
    char warnings[4][200];
    int nwarnings;
} ob_procs;

/* Finds the processes and takes the first sample. Never fails: what cannot
 * be found is left out with a warning (ps->warnings). */
void ob_procs_start(ob_procs *ps, const ob_run *run, const char *orders_dbname, int self_backend);

/* Takes the second sample, finds PostgreSQL processes that appeared. */
void ob_procs_end(ob_procs *ps);

/* CPU the process used during the run, in µs. */
int64_t ob_proc_cpu_us(const ob_proc *p);

void ob_procs_free(ob_procs *ps);

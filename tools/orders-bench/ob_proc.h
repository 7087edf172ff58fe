/*
 * ob_proc.h - the processes a run costs, and what they used: CPU time
 * (utime+stime of /proc/<pid>/stat, the delta between the start and the end
 * of the run) and memory at the end (VmRSS, RssAnon of /proc/<pid>/status).
 *
 * Found at the start: the three daemons (--pids, else the process listening
 * on each URL's port, else by process name), the Kafka broker (--broker-pid,
 * else the java process running kafka.Kafka that order-service is connected
 * to), every PostgreSQL process (name starting with "postgres") and this
 * tool. During the run they are sampled every OB_SAMPLE_NS and PostgreSQL
 * processes are looked for again: those that appear count from zero, those
 * that exit count until their last sample. What the postmaster's children
 * used and no sample saw (processes shorter than a sample interval, the
 * last moments of exited ones) is its cutime+cstime minus what the samples
 * saw, shown as one line that is not counted: it cannot be told whose it is.
 * Only the PostgreSQL cluster that serves this tool's own connection counts.
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

/* How often the processes are sampled during the run: a PostgreSQL process
 * that lives shorter than this may be missed (see unattributed_us). */
#define OB_SAMPLE_NS 500000000LL

typedef struct {
    int pid, ppid;
    ob_proc_kind kind;
    char label[96]; /* "order-service", "postgres backend of order-service", ... */
    bool counted;   /* part of the all-processes total */
    bool named;     /* label known: a PostgreSQL child is named once it has its title */
    bool at_start;  /* running when the run started */
    bool alive;     /* running at the last sample */
    unsigned long long starttime; /* to tell a reused pid */
    int64_t cpu0_us;              /* utime+stime at the start; 0 if it appeared later */
    int64_t cpu_us;               /* utime+stime at the last sample that saw it */
    int64_t child0_us;            /* cutime+cstime (reaped children) at the start */
    int64_t child_us;             /* ... at the last sample */
    long rss_kb, anon_kb;         /* at the end; -1 if unknown */
    int64_t wake0, wake;          /* wake-ups (ob_procfs_wakeups) at the start and at the
                                     end (read only then, or when it appeared: wake0 is then 0,
                                     its whole life); -1 if unknown */
} ob_proc;

typedef struct {
    ob_proc *v;
    size_t n, cap;
    const ob_run *run;
    const char *orders_dbname; /* order-service's database: its backends are the run's */
    int self_backend;          /* the backend of this tool's own connection */
    int postmaster;            /* of the cluster that serves the run; 0 if not on this host */
    int order_service_pid;     /* 0 if not found */
    unsigned char *seen;       /* bitmap by pid: already classified */
    size_t seen_bits;
    int64_t unattributed_us; /* CPU of the postmaster's children that exited between samples */
    char warnings[6][200];
    int nwarnings;
} ob_procs;

/* Finds the processes and takes the first sample. Never fails: what cannot
 * be found is left out with a warning (ps->warnings). */
void ob_procs_start(ob_procs *ps, const ob_run *run, const char *orders_dbname, int self_backend);

/* Samples every known process and finds PostgreSQL processes that appeared;
 * called every OB_SAMPLE_NS during the run. */
void ob_procs_sample(ob_procs *ps);

/* The last sample, the memory, and the CPU of exited processes. */
void ob_procs_end(ob_procs *ps);

/* CPU the process used during the run (until its last sample), in µs. */
int64_t ob_proc_cpu_us(const ob_proc *p);

/* Wake-ups of its threads during the run (until its last sample), or -1 if
 * they could not be read. */
int64_t ob_proc_wakeups(const ob_proc *p);

void ob_procs_free(ob_procs *ps);

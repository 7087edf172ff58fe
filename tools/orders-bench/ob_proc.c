/*
 * ob_proc.c - see ob_proc.h.
 */
#include "ob_proc.h"

#include "ob_procfs.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MAX_OWNERS 512
#define MAX_DBS 16

static const char *const daemon_names[] = {"order-service", "payment-service", "inventory-service"};

/* A TCP port of a known client, to name the backend at the other end. */
typedef struct {
    int port;
    const char *name;
} owner;

typedef struct {
    owner v[MAX_OWNERS];
    size_t n;
    char dbs[MAX_DBS][64]; /* the run's databases: order-service's and the daemons' backends' */
    size_t ndbs;
} owners;

static void warn(ob_procs *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(ob_procs *ps, const char *fmt, ...)
{
    va_list ap;

    if (ps->nwarnings >= (int)(sizeof(ps->warnings) / sizeof(ps->warnings[0])))
        return;
    va_start(ap, fmt);
    vsnprintf(ps->warnings[ps->nwarnings++], sizeof(ps->warnings[0]), fmt, ap);
    va_end(ap);
}

static int64_t self_cpu_us(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

/* ---- the table ---- */

static bool seen(const ob_procs *ps, int pid)
{
    return (size_t)pid < ps->seen_bits && (ps->seen[pid / 8] >> (pid % 8) & 1);
}

static void mark_seen(ob_procs *ps, int pid)
{
    if ((size_t)pid < ps->seen_bits)
        ps->seen[pid / 8] |= (unsigned char)(1u << (pid % 8));
}

static ob_proc *add(ob_procs *ps, int pid, ob_proc_kind kind, const char *label)
{
    ob_proc *p;

    if (ps->n == ps->cap) {
        size_t nc = ps->cap ? ps->cap * 2 : 64;
        ob_proc *nv = realloc(ps->v, nc * sizeof(*nv));
        if (!nv)
            return NULL;
        ps->v = nv;
        ps->cap = nc;
    }
    p = &ps->v[ps->n++];
    memset(p, 0, sizeof(*p));
    p->pid = pid;
    p->kind = kind;
    p->counted = true;
    p->rss_kb = p->anon_kb = -1;
    snprintf(p->label, sizeof(p->label), "%s", label);
    p->named = kind != OB_PROC_POSTGRES;
    if (kind != OB_PROC_SELF)
        mark_seen(ps, pid);
    return p;
}

/* Reads p's wake-ups (-1 once one read failed). */
static void sample_wakeups(ob_proc *p)
{
    int64_t w = ob_procfs_wakeups(p->kind == OB_PROC_SELF ? 0 : p->pid);

    p->wake = w >= 0 && p->wake >= 0 ? w : -1;
}

/* Samples p; the first sample of a process running at the start sets its
 * base. Wake-ups are read only when wakes is set (the first sample of a
 * process and the last of the run): reading every thread's status is the
 * dearest part of a sample (the broker has ~90 threads), and this tool's
 * own CPU counts in the total. */
static void sample(ob_proc *p, bool first, bool wakes)
{
    ob_pstat st;

    if (p->kind == OB_PROC_SELF) {
        p->cpu_us = self_cpu_us();
        p->alive = true;
    } else if (ob_procfs_stat(p->pid, &st) < 0 ||
               ((p->at_start || p->alive) && st.starttime != p->starttime)) {
        p->alive = false; /* gone (a reused pid is another process) */
        return;
    } else {
        p->ppid = st.ppid;
        p->starttime = st.starttime;
        p->cpu_us = st.cpu_us;
        p->child_us = st.child_us;
        p->alive = true;
    }
    if (wakes)
        sample_wakeups(p);
    if (first) {
        p->at_start = true;
        p->cpu0_us = p->cpu_us;
        p->child0_us = p->child_us;
        p->wake0 = p->wake;
    }
}

int64_t ob_proc_cpu_us(const ob_proc *p)
{
    return p->cpu_us - p->cpu0_us;
}

int64_t ob_proc_wakeups(const ob_proc *p)
{
    if (p->wake < 0 || p->wake0 < 0)
        return -1;
    return p->wake > p->wake0 ? p->wake - p->wake0 : 0;
}

/* ---- daemons and broker ---- */

static int by_comm(ob_procs *ps, const char *name)
{
    int *pids, found = 0, count = 0;
    size_t n, i;
    char comm[32];

    if (ob_pids(&pids, &n) < 0)
        return 0;
    for (i = 0; i < n; i++)
        if (ob_procfs_comm(pids[i], comm, sizeof(comm)) == 0 && strncmp(comm, name, 15) == 0) {
            found = pids[i];
            count++;
        }
    free(pids);
    if (count > 1) {
        warn(ps, "%d processes are named %s: not counted (use --pids)", count, name);
        return 0;
    }
    return found;
}

static void find_daemons(ob_procs *ps, const ob_socks *socks)
{
    const ob_opts *o = ps->run->o;
    const ob_url *urls[3] = {&ps->run->url, &ps->run->payment_url, &ps->run->inventory_url};
    size_t i;

    if (o->npids > 0) {
        for (i = 0; i < o->npids; i++)
            add(ps, o->pids[i].pid, OB_PROC_DAEMON, o->pids[i].name);
    } else {
        for (i = 0; i < 3; i++) {
            int pid = urls[i]->loopback ? ob_pid_listening(socks, urls[i]->port) : 0;
            if (pid == 0)
                pid = by_comm(ps, daemon_names[i]);
            if (pid == 0)
                warn(ps, "%s not found: not counted (use --pids)", daemon_names[i]);
            else
                add(ps, pid, OB_PROC_DAEMON, daemon_names[i]);
        }
    }
    for (i = 0; i < ps->n; i++)
        if (strcmp(ps->v[i].label, "order-service") == 0)
            ps->order_service_pid = ps->v[i].pid;
}

/* Does pid listen on a port that one of order-service's connections goes to? */
static bool serves(const ob_socks *s, int pid, const uint64_t *os, size_t nos)
{
    uint64_t *in;
    size_t n, i, j;
    bool yes = false;

    if (ob_pid_inodes(pid, &in, &n) < 0)
        return false;
    for (i = 0; i < s->n && !yes; i++) {
        if (s->v[i].state != OB_TCP_LISTEN || !ob_inodes_has(in, n, s->v[i].inode))
            continue;
        for (j = 0; j < s->n && !yes; j++)
            yes = s->v[j].state == OB_TCP_ESTABLISHED && s->v[j].rport == s->v[i].lport &&
                  ob_inodes_has(os, nos, s->v[j].inode);
    }
    free(in);
    return yes;
}

static void find_broker(ob_procs *ps, const ob_socks *socks)
{
    int *pids, chosen = 0, nkafka = 0, last = 0;
    uint64_t *os = NULL;
    size_t n, i, nos = 0;
    char comm[32], cmd[8192];

    if (ps->run->o->broker_pid) {
        add(ps, ps->run->o->broker_pid, OB_PROC_BROKER, "kafka broker");
        return;
    }
    if (ob_pids(&pids, &n) < 0)
        return;
    if (ps->order_service_pid)
        ob_pid_inodes(ps->order_service_pid, &os, &nos);
    for (i = 0; i < n && !chosen; i++) {
        if (ob_procfs_comm(pids[i], comm, sizeof(comm)) < 0 || strcmp(comm, "java") != 0 ||
            ob_procfs_cmdline(pids[i], cmd, sizeof(cmd)) < 0 || !strstr(cmd, " kafka.Kafka"))
            continue;
        nkafka++;
        last = pids[i];
        if (nos > 0 && serves(socks, pids[i], os, nos))
            chosen = pids[i];
    }
    free(pids);
    free(os);
    if (!chosen && nkafka == 1 && !ps->order_service_pid)
        chosen = last;
    if (chosen)
        add(ps, chosen, OB_PROC_BROKER, "kafka broker");
    else
        warn(ps, "kafka broker %s: not counted (use --broker-pid)",
             nkafka ? "that order-service is connected to not found" : "not found");
}

/* ---- PostgreSQL ---- */

static void add_owner(owners *w, const ob_socks *s, int pid, const char *name)
{
    uint64_t *in;
    size_t n, i;

    if (pid <= 0 || ob_pid_inodes(pid, &in, &n) < 0)
        return;
    for (i = 0; i < s->n && w->n < MAX_OWNERS; i++)
        if (s->v[i].state == OB_TCP_ESTABLISHED && ob_inodes_has(in, n, s->v[i].inode))
            w->v[w->n++] = (owner){s->v[i].lport, name};
    free(in);
}

static bool has_db(const owners *w, const char *db)
{
    size_t i;

    for (i = 0; i < w->ndbs; i++)
        if (strcmp(w->dbs[i], db) == 0)
            return true;
    return false;
}

static void add_db(owners *w, const char *db)
{
    if (!has_db(w, db) && w->ndbs < MAX_DBS)
        snprintf(w->dbs[w->ndbs++], sizeof(w->dbs[0]), "%s", db);
}

/* The ports of the daemons' connections, and the databases they use. */
static owners *owners_load(const ob_procs *ps)
{
    owners *w = calloc(1, sizeof(*w));
    ob_socks socks;
    size_t i;

    if (!w)
        return NULL;
    if (ob_socks_load(&socks) < 0)
        socks = (ob_socks){0};
    for (i = 0; i < ps->n; i++)
        if (ps->v[i].kind == OB_PROC_DAEMON)
            add_owner(w, &socks, ps->v[i].pid, ps->v[i].label);
    ob_socks_free(&socks);
    add_db(w, ps->orders_dbname);
    return w;
}

static const char *const background[] = {
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "logical replication worker",
    "parallel worker",
    "archiver",
    "walsender",
    "walreceiver",
    "startup",
    "logger",
    "stats collector",
    "io worker",
    "walsummarizer",
    "slotsync worker",
};

/* The title of a PostgreSQL process after "postgres: " and the cluster name. */
static const char *title(const char *cmd)
{
    const char *t = cmd + strlen("postgres: "), *sp = strchr(t, ' ');

    if (sp && sp > t && sp[-1] == ':')
        t = sp + 1; /* "15/main: " */
    return t;
}

static void name(ob_proc *p, bool counted, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void name(ob_proc *p, bool counted, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(p->label, sizeof(p->label), fmt, ap);
    va_end(ap);
    p->counted = counted;
    p->named = true;
}

/* "user db client(port) state": named by the client holding that port, else
 * by its database; a backend of another database is not the run's. With
 * final false only the daemons' backends are named (and their databases noted). */
static void label_backend(const ob_procs *ps, ob_proc *p, const char *t, owners **wp, bool final)
{
    char user[64], db[64], client[128];
    const char *paren;
    owners *w;
    size_t i;

    if (!*wp && !(*wp = owners_load(ps)))
        return;
    w = *wp;
    if (sscanf(t, "%63s %63s %127s", user, db, client) != 3) {
        name(p, true, "postgres other");
        return;
    }
    if ((paren = strrchr(client, '(')) != NULL) {
        int port = (int)strtol(paren + 1, NULL, 10);
        for (i = 0; i < w->n; i++)
            if (w->v[i].port == port) {
                name(p, true, "postgres backend of %s", w->v[i].name);
                add_db(w, db);
                return;
            }
    }
    if (!final)
        return;
    if (has_db(w, db))
        name(p, true, "postgres backend, database %.40s", db);
    else
        name(p, false, "postgres backend, other client (%.40s)", db);
}

static const ob_proc *find(const ob_procs *ps, int pid)
{
    size_t i;

    for (i = 0; i < ps->n; i++)
        if (ps->v[i].pid == pid && ps->v[i].kind == OB_PROC_POSTGRES)
            return &ps->v[i];
    return NULL;
}

/* "parallel worker for PID n": the leader's; waits until the leader is named. */
static void label_worker(const ob_procs *ps, ob_proc *p, const char *t)
{
    const ob_proc *leader = find(ps, (int)strtol(t + strlen("parallel worker for PID "), NULL, 10));

    if (!leader)
        name(p, false, "postgres parallel workers of unknown backends");
    else if (leader->named)
        name(p, leader->counted, "%.70s, parallel workers", leader->label);
}

static void label_postgres(ob_procs *ps, ob_proc *p, owners **wp, bool final)
{
    static const char av[] = "autovacuum worker ", pw[] = "parallel worker for PID ";
    char cmd[512];
    const char *t;
    size_t i;

    if (ps->postmaster && p->pid != ps->postmaster && p->ppid != ps->postmaster)
        name(p, false, "postgres processes of another cluster");
    else if (p->pid == ps->self_backend)
        name(p, true, "postgres backend of orders-bench");
    else if (ob_procfs_cmdline(p->pid, cmd, sizeof(cmd)) < 0)
        p->alive = false; /* named "exited before it could be named" at the end */
    else if (strncmp(cmd, "postgres: ", 10) != 0) {
        /* A child forked a moment ago still has the postmaster's command line. */
        if (p->pid == ps->postmaster || !ps->postmaster)
            name(p, true, "postgres postmaster");
    } else if (strncmp(t = title(cmd), av, sizeof(av) - 1) == 0) {
        bool ours;
        if (!*wp && !(*wp = owners_load(ps)))
            return;
        ours = has_db(*wp, t + sizeof(av) - 1);
        name(p, ours, "postgres autovacuum worker%s", ours ? "" : " of another database");
    } else if (strncmp(t, pw, sizeof(pw) - 1) == 0) {
        if (final)
            label_worker(ps, p, t);
    } else {
        for (i = 0; i < sizeof(background) / sizeof(background[0]); i++)
            if (strncmp(t, background[i], strlen(background[i])) == 0) {
                name(p, true, "postgres %s", background[i]);
                return;
            }
        label_backend(ps, p, t, wp, final);
    }
}

/* Adds the PostgreSQL processes not known yet, samples them, and names those
 * not named yet. */
static void find_postgres(ob_procs *ps, bool first)
{
    owners *w = NULL;
    int *pids;
    size_t n, i, unnamed = 0;
    char comm[32];

    if (ob_pids(&pids, &n) < 0)
        return;
    for (i = 0; i < n; i++) {
        ob_proc *p;
        if (seen(ps, pids[i]))
            continue;
        mark_seen(ps, pids[i]);
        if (ob_procfs_comm(pids[i], comm, sizeof(comm)) == 0 && strncmp(comm, "postgres", 8) == 0 &&
            (p = add(ps, pids[i], OB_PROC_POSTGRES, "postgres")) != NULL)
            sample(p, first, true);
    }
    free(pids);
    for (i = 0; i < ps->n; i++)
        unnamed += !ps->v[i].named && ps->v[i].alive;
    if (unnamed == 0)
        return;
    for (i = 0; i < ps->n; i++) /* two passes: the daemons' databases first */
        if (!ps->v[i].named && ps->v[i].alive)
            label_postgres(ps, &ps->v[i], &w, false);
    for (i = 0; i < ps->n; i++)
        if (!ps->v[i].named && ps->v[i].alive)
            label_postgres(ps, &ps->v[i], &w, true);
    free(w);
}

/* The postmaster of the cluster that serves this tool's connection. */
static int find_postmaster(ob_procs *ps)
{
    ob_pstat st;
    char comm[32];

    if (ps->self_backend <= 0 || ob_procfs_comm(ps->self_backend, comm, sizeof(comm)) < 0 ||
        strncmp(comm, "postgres", 8) != 0 || ob_procfs_stat(ps->self_backend, &st) < 0) {
        warn(ps, "the orders database is not served from this host: all PostgreSQL processes "
                 "here are counted");
        return 0;
    }
    return st.ppid;
}

void ob_procs_start(ob_procs *ps, const ob_run *run, const char *orders_dbname, int self_backend)
{
    ob_socks socks;
    size_t i;

    memset(ps, 0, sizeof(*ps));
    ps->run = run;
    ps->orders_dbname = orders_dbname;
    ps->self_backend = self_backend;
    ps->seen_bits = 4194304; /* the largest pid_max */
    ps->seen = calloc(ps->seen_bits / 8, 1);
    if (!ps->seen)
        ps->seen_bits = 0;
    if (ob_socks_load(&socks) < 0)
        socks = (ob_socks){0};
    find_daemons(ps, &socks);
    find_broker(ps, &socks);
    ob_socks_free(&socks);
    add(ps, (int)getpid(), OB_PROC_SELF, "orders-bench (this tool)");
    for (i = 0; i < ps->n; i++) {
        sample(&ps->v[i], true, true);
        if (!ps->v[i].alive)
            warn(ps, "%s (pid %d) is not running", ps->v[i].label, ps->v[i].pid);
    }
    ps->postmaster = find_postmaster(ps);
    find_postgres(ps, true);
}

static void sample_all(ob_procs *ps, bool wakes)
{
    size_t i;

    for (i = 0; i < ps->n; i++)
        if (ps->v[i].alive)
            sample(&ps->v[i], false, wakes);
    find_postgres(ps, false);
}

void ob_procs_sample(ob_procs *ps)
{
    sample_all(ps, false);
}

void ob_procs_end(ob_procs *ps)
{
    const ob_proc *pm = NULL;
    int64_t saw = 0;
    size_t i;

    sample_all(ps, true);
    for (i = 0; i < ps->n; i++) {
        ob_proc *p = &ps->v[i];
        if (!p->named)
            name(p, false, "postgres, %s before it could be named",
                 p->alive ? "started just" : "exited");
        if (p->kind == OB_PROC_SELF)
            ob_procfs_mem(0, &p->rss_kb, &p->anon_kb);
        else if (p->alive)
            ob_procfs_mem(p->pid, &p->rss_kb, &p->anon_kb);
        if (p->pid == ps->postmaster && p->alive)
            pm = p;
        if (p->kind == OB_PROC_POSTGRES && !p->alive && p->ppid == ps->postmaster)
            saw += p->cpu_us; /* its whole life is in the postmaster's cutime */
        if (p->at_start && !p->alive && p->kind != OB_PROC_POSTGRES)
            warn(ps, "%s (pid %d) exited during the run: CPU counted until its last sample",
                 p->label, p->pid);
    }
    if (pm && pm->child_us - pm->child0_us > saw)
        ps->unattributed_us = pm->child_us - pm->child0_us - saw;
}

void ob_procs_free(ob_procs *ps)
{
    free(ps->v);
    free(ps->seen);
    ps->v = NULL;
    ps->seen = NULL;
    ps->n = ps->cap = 0;
}

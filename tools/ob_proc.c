/*
 * ob_proc.c - see ob_proc.h.
 */
#include "ob_proc.h"

#include "ob_net.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define MAX_OWNERS 512

static const char *const daemon_names[] = {"order-service", "payment-service", "inventory-service"};

/* A TCP port of a known client, to name the backend at the other end. */
typedef struct {
    int port;
    const char *name;
} owner;

typedef struct {
    owner v[MAX_OWNERS];
    size_t n;
    char dbs[16][64]; /* the run's databases: of order-service and the daemons' backends */
    size_t ndbs;
} owners;

static void warn(ob_procs *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(ob_procs *ps, const char *fmt, ...)
{
    va_list ap;

    if (ps->nwarnings >= 4)
        return;
    va_start(ap, fmt);
    vsnprintf(ps->warnings[ps->nwarnings++], sizeof(ps->warnings[0]), fmt, ap);
    va_end(ap);
}

/* ---- /proc reading ---- */

static int read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    size_t n;

    if (!f)
        return -errno;
    n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (int)n;
}

/* The command line with NULs as spaces, trailing spaces removed. */
static int read_cmdline(int pid, char *buf, size_t len)
{
    char path[64];
    int n, i;

    snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
    if ((n = read_file(path, buf, len)) <= 0)
        return -ENOENT;
    for (i = 0; i < n; i++)
        if (buf[i] == '\0')
            buf[i] = ' ';
    while (n > 0 && buf[n - 1] == ' ')
        buf[--n] = '\0';
    return n;
}

static int read_comm(int pid, char *buf, size_t len)
{
    char path[64];
    int n;

    snprintf(path, sizeof(path), "/proc/%d/comm", pid);
    if ((n = read_file(path, buf, len)) <= 0)
        return -ENOENT;
    if (buf[n - 1] == '\n')
        buf[n - 1] = '\0';
    return 0;
}

/* utime+stime, cutime+cstime (µs) and starttime of /proc/<pid>/stat. */
static int read_stat(int pid, int64_t *cpu, int64_t *child, unsigned long long *start)
{
    static long hz;
    unsigned long long f[20];
    char path[64], buf[1024], *p;
    int i;

    if (!hz)
        hz = sysconf(_SC_CLK_TCK);
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (read_file(path, buf, sizeof(buf)) <= 0 || !(p = strrchr(buf, ')')))
        return -ENOENT;
    p += 2; /* fields from the third on: state, ppid, ... */
    for (i = 0; i < 20; i++) {
        char *end;
        while (*p == ' ')
            p++;
        f[i] = i == 0 ? (unsigned long long)*p : strtoull(p, &end, 10);
        p = i == 0 ? p + 1 : end;
    }
    *cpu = (int64_t)((f[11] + f[12]) * 1000000ULL / (unsigned long long)hz);
    *child = (int64_t)((f[13] + f[14]) * 1000000ULL / (unsigned long long)hz);
    *start = f[19];
    return 0;
}

static void read_mem(ob_proc *p)
{
    char path[64], buf[4096], *l;

    p->rss_kb = p->anon_kb = -1;
    if (p->kind == OB_PROC_SELF)
        snprintf(path, sizeof(path), "/proc/self/status");
    else
        snprintf(path, sizeof(path), "/proc/%d/status", p->pid);
    if (read_file(path, buf, sizeof(buf)) <= 0)
        return;
    if ((l = strstr(buf, "\nVmRSS:")))
        p->rss_kb = strtol(l + 7, NULL, 10);
    if ((l = strstr(buf, "\nRssAnon:")))
        p->anon_kb = strtol(l + 9, NULL, 10);
}

static int64_t self_cpu_us(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

/* ---- the table ---- */

static ob_proc *add(ob_procs *ps, int pid, ob_proc_kind kind, const char *label, bool counted)
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
    p->counted = counted;
    p->rss_kb = p->anon_kb = -1;
    snprintf(p->label, sizeof(p->label), "%s", label);
    return p;
}

static ob_proc *find(ob_procs *ps, int pid)
{
    size_t i;

    for (i = 0; i < ps->n; i++)
        if (ps->v[i].pid == pid && ps->v[i].kind != OB_PROC_SELF)
            return &ps->v[i];
    return NULL;
}

static void sample(ob_proc *p, bool end)
{
    int64_t cpu, child;
    unsigned long long st;

    if (p->kind == OB_PROC_SELF) {
        *(end ? &p->cpu1_us : &p->cpu0_us) = self_cpu_us();
        *(end ? &p->at_end : &p->at_start) = true;
        return;
    }
    if (read_stat(p->pid, &cpu, &child, &st) < 0 || (end && p->at_start && st != p->starttime))
        return; /* gone (or its pid reused: then the new process is another entry) */
    if (end) {
        p->cpu1_us = cpu;
        p->child1_us = child;
        p->at_end = true;
    } else {
        p->cpu0_us = cpu;
        p->child0_us = child;
        p->starttime = st;
        p->at_start = true;
    }
}

int64_t ob_proc_cpu_us(const ob_proc *p)
{
    if (!p->at_end)
        return 0;
    return p->cpu1_us - (p->at_start ? p->cpu0_us : 0);
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
        if (read_comm(pids[i], comm, sizeof(comm)) == 0 && strncmp(comm, name, 15) == 0) {
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
            add(ps, o->pids[i].pid, OB_PROC_DAEMON, o->pids[i].name, true);
    } else {
        for (i = 0; i < 3; i++) {
            int pid = urls[i]->loopback ? ob_pid_listening(socks, urls[i]->port) : 0;
            if (pid == 0)
                pid = by_comm(ps, daemon_names[i]);
            if (pid == 0)
                warn(ps, "%s not found: not counted (use --pids)", daemon_names[i]);
            else
                add(ps, pid, OB_PROC_DAEMON, daemon_names[i], true);
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
        add(ps, ps->run->o->broker_pid, OB_PROC_BROKER, "kafka broker", true);
        return;
    }
    if (ob_pids(&pids, &n) < 0)
        return;
    if (ps->order_service_pid)
        ob_pid_inodes(ps->order_service_pid, &os, &nos);
    for (i = 0; i < n && !chosen; i++) {
        if (read_comm(pids[i], comm, sizeof(comm)) < 0 || strcmp(comm, "java") != 0 ||
            read_cmdline(pids[i], cmd, sizeof(cmd)) < 0 || !strstr(cmd, " kafka.Kafka"))
            continue;
        nkafka++;
        last = pids[i];
        if (nos > 0 && serves(socks, pids[i], os, nos))
            chosen = pids[i];
    }
    free(pids);
    free(os);
    if (!chosen && nkafka == 1)
        chosen = last;
    if (chosen)
        add(ps, chosen, OB_PROC_BROKER, "kafka broker", true);
    else
        warn(ps, "kafka broker %s: not counted (use --broker-pid)",
             nkafka ? "order-service is connected to not found" : "not found");
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

static void add_db(owners *w, const char *db)
{
    size_t i;

    for (i = 0; i < w->ndbs; i++)
        if (strcmp(w->dbs[i], db) == 0)
            return;
    if (w->ndbs < sizeof(w->dbs) / sizeof(w->dbs[0]))
        snprintf(w->dbs[w->ndbs++], sizeof(w->dbs[0]), "%s", db);
}

static const char *const background[] = {
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "autovacuum worker",
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

/* Labels a backend from "user db client(port) state"; 1 if it is one. */
static int label_backend(ob_proc *p, const char *t, owners *w, bool final)
{
    char user[64], db[64], client[128];
    const char *paren;
    size_t i;

    if (sscanf(t, "%63s %63s %127s", user, db, client) != 3)
        return 0;
    if ((paren = strrchr(client, '(')) != NULL) {
        int port = (int)strtol(paren + 1, NULL, 10);
        for (i = 0; i < w->n; i++)
            if (w->v[i].port == port) {
                snprintf(p->label, sizeof(p->label), "postgres backend of %s", w->v[i].name);
                add_db(w, db);
                return 1;
            }
    }
    if (!final)
        return 1;
    for (i = 0; i < w->ndbs; i++)
        if (strcmp(w->dbs[i], db) == 0) {
            snprintf(p->label, sizeof(p->label), "postgres backend, database %s", db);
            return 1;
        }
    snprintf(p->label, sizeof(p->label), "postgres backend of another client (%.40s)", db);
    p->counted = false;
    return 1;
}

static void label_postgres(ob_procs *ps, ob_proc *p, owners *w, bool final)
{
    char cmd[512];
    const char *t;
    size_t i;

    p->counted = true;
    if (p->pid == ps->self_backend) {
        snprintf(p->label, sizeof(p->label), "postgres backend of orders-bench");
        return;
    }
    if (read_cmdline(p->pid, cmd, sizeof(cmd)) < 0)
        return;
    if (strncmp(cmd, "postgres: ", 10) != 0) {
        snprintf(p->label, sizeof(p->label), "postgres postmaster");
        return;
    }
    t = title(cmd);
    for (i = 0; i < sizeof(background) / sizeof(background[0]); i++)
        if (strncmp(t, background[i], strlen(background[i])) == 0) {
            snprintf(p->label, sizeof(p->label), "postgres %s", background[i]);
            return;
        }
    if (!label_backend(p, t, w, final))
        snprintf(p->label, sizeof(p->label), "postgres other");
}

/* Adds the PostgreSQL processes not in the table yet and labels all. */
static void find_postgres(ob_procs *ps, const ob_socks *socks, bool end)
{
    owners *w = calloc(1, sizeof(*w));
    int *pids;
    size_t n, i, first = ps->n;
    char comm[32];

    if (!w || ob_pids(&pids, &n) < 0) {
        free(w);
        return;
    }
    for (i = 0; i < ps->n; i++)
        if (ps->v[i].kind == OB_PROC_DAEMON)
            add_owner(w, socks, ps->v[i].pid, ps->v[i].label);
    add_db(w, ps->orders_dbname);
    for (i = 0; i < n; i++) {
        ob_proc *p = find(ps, pids[i]);
        if (p && !(end && p->at_start && !p->at_end))
            continue; /* known, or known and gone: then pids[i] is a new process */
        if (read_comm(pids[i], comm, sizeof(comm)) == 0 && strncmp(comm, "postgres", 8) == 0)
            add(ps, pids[i], OB_PROC_POSTGRES, "postgres", true);
    }
    free(pids);
    for (i = first; i < ps->n; i++) /* two passes: the daemons' databases first */
        label_postgres(ps, &ps->v[i], w, false);
    for (i = first; i < ps->n; i++)
        label_postgres(ps, &ps->v[i], w, true);
    free(w);
}

void ob_procs_start(ob_procs *ps, const ob_run *run, const char *orders_dbname, int self_backend)
{
    ob_socks socks;
    size_t i;

    memset(ps, 0, sizeof(*ps));
    ps->run = run;
    ps->orders_dbname = orders_dbname;
    ps->self_backend = self_backend;
    if (ob_socks_load(&socks) < 0)
        socks = (ob_socks){0};
    find_daemons(ps, &socks);
    find_broker(ps, &socks);
    find_postgres(ps, &socks, false);
    ob_socks_free(&socks);
    add(ps, (int)getpid(), OB_PROC_SELF, "orders-bench (this tool)", true);
    for (i = 0; i < ps->n; i++)
        sample(&ps->v[i], false);
    for (i = 0; i < ps->n; i++)
        if (!ps->v[i].at_start && ps->v[i].kind != OB_PROC_POSTGRES)
            warn(ps, "%s (pid %d) is not running", ps->v[i].label, ps->v[i].pid);
}

void ob_procs_end(ob_procs *ps)
{
    size_t i, known;
    ob_socks socks;
    int64_t reaped = 0, before = 0;

    for (i = 0; i < ps->n; i++)
        sample(&ps->v[i], true);
    known = ps->n;
    if (ob_socks_load(&socks) < 0)
        socks = (ob_socks){0};
    find_postgres(ps, &socks, true);
    ob_socks_free(&socks);
    for (i = known; i < ps->n; i++)
        sample(&ps->v[i], true); /* appeared during the run: counted from zero */
    for (i = 0; i < known; i++) {
        const ob_proc *p = &ps->v[i];
        if (p->kind != OB_PROC_POSTGRES || !p->at_start)
            continue;
        if (p->at_end) {
            reaped += p->child1_us - p->child0_us;
        } else {
            before += p->cpu0_us;
            ps->nexited++;
        }
    }
    ps->exited_us = reaped > before ? reaped - before : 0;
    for (i = 0; i < ps->n; i++) {
        read_mem(&ps->v[i]);
        if (ps->v[i].at_start && !ps->v[i].at_end && ps->v[i].kind != OB_PROC_POSTGRES)
            warn(ps, "%s (pid %d) exited during the run: its CPU is not counted", ps->v[i].label,
                 ps->v[i].pid);
    }
}

void ob_procs_free(ob_procs *ps)
{
    free(ps->v);
    ps->v = NULL;
    ps->n = ps->cap = 0;
}

/*
 * ob_procfs.c - see ob_procfs.h.
 */
#include "ob_procfs.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int load_table(ob_socks *s, size_t *cap, const char *path)
{
    FILE *f = fopen(path, "re");
    char line[512];

    if (!f)
        return 0;                        /* no IPv6, say */
    if (!fgets(line, sizeof(line), f)) { /* the header line */
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned lport, rport, state;
        unsigned long long inode;
        ob_sock *k;

        if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %*s %*s %*s %*s %*s %llu",
                   &lport, &rport, &state, &inode) != 4)
            continue;
        if (s->n == *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            ob_sock *nv = realloc(s->v, nc * sizeof(*nv));
            if (!nv) {
                fclose(f);
                return -ENOMEM;
            }
            s->v = nv;
            *cap = nc;
        }
        k = &s->v[s->n++];
        k->inode = inode;
        k->lport = (int)lport;
        k->rport = (int)rport;
        k->state = (int)state;
    }
    fclose(f);
    return 0;
}

int ob_socks_load(ob_socks *ret)
{
    size_t cap = 0;
    int r;

    ret->v = NULL;
    ret->n = 0;
    if ((r = load_table(ret, &cap, "/proc/net/tcp")) < 0 ||
        (r = load_table(ret, &cap, "/proc/net/tcp6")) < 0) {
        ob_socks_free(ret);
        return r;
    }
    return 0;
}

void ob_socks_free(ob_socks *s)
{
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int ob_pid_inodes(int pid, uint64_t **ret, size_t *ret_n)
{
    char path[64], link[64];
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    DIR *d;

    *ret = NULL;
    *ret_n = 0;
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    if (!(d = opendir(path)))
        return 0;
    while ((e = readdir(d)) != NULL) {
        char fdpath[320];
        unsigned long long inode;
        ssize_t len;

        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        snprintf(fdpath, sizeof(fdpath), "%s/%s", path, e->d_name);
        len = readlink(fdpath, link, sizeof(link) - 1);
        if (len <= 0)
            continue;
        link[len] = '\0';
        if (sscanf(link, "socket:[%llu]", &inode) != 1)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            uint64_t *nv = realloc(v, nc * sizeof(*nv));
            if (!nv) {
                free(v);
                closedir(d);
                return -ENOMEM;
            }
            v = nv;
            cap = nc;
        }
        v[n++] = inode;
    }
    closedir(d);
    if (n > 0)
        qsort(v, n, sizeof(*v), cmp_u64);
    *ret = v;
    *ret_n = n;
    return 0;
}

bool ob_inodes_has(const uint64_t *inodes, size_t n, uint64_t inode)
{
    return n > 0 && bsearch(&inode, inodes, n, sizeof(*inodes), cmp_u64) != NULL;
}

int ob_pids(int **ret, size_t *ret_n)
{
    int *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    DIR *d = opendir("/proc");

    *ret = NULL;
    *ret_n = 0;
    if (!d)
        return -errno;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (!isdigit((unsigned char)e->d_name[0]) || *end || pid <= 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 512;
            int *nv = realloc(v, nc * sizeof(*nv));
            if (!nv) {
                free(v);
                closedir(d);
                return -ENOMEM;
            }
            v = nv;
            cap = nc;
        }
        v[n++] = (int)pid;
    }
    closedir(d);
    *ret = v;
    *ret_n = n;
    return 0;
}

int ob_pid_listening(const ob_socks *s, int port)
{
    uint64_t want[8];
    size_t nwant = 0, i, j, npids = 0;
    int *pids = NULL, found = 0;

    for (i = 0; i < s->n && nwant < 8; i++)
        if (s->v[i].state == OB_TCP_LISTEN && s->v[i].lport == port)
            want[nwant++] = s->v[i].inode;
    if (nwant == 0 || ob_pids(&pids, &npids) < 0)
        return 0;
    for (i = 0; i < npids && !found; i++) {
        uint64_t *inodes;
        size_t n;
        if (ob_pid_inodes(pids[i], &inodes, &n) < 0)
            break;
        for (j = 0; j < nwant && !found; j++)
            if (ob_inodes_has(inodes, n, want[j]))
                found = pids[i];
        free(inodes);
    }
    free(pids);
    return found;
}

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

int ob_procfs_cmdline(int pid, char *buf, size_t len)
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
    return 0;
}

int ob_procfs_comm(int pid, char *buf, size_t len)
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

int ob_procfs_stat(int pid, ob_pstat *ret)
{
    static long hz;
    unsigned long long f[20], tick;
    char path[64], buf[1024], *p;
    int i;

    if (!hz)
        hz = sysconf(_SC_CLK_TCK);
    tick = (unsigned long long)hz;
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
    ret->ppid = (int)f[1];
    ret->cpu_us = (int64_t)((f[11] + f[12]) * 1000000ULL / tick);
    ret->child_us = (int64_t)((f[13] + f[14]) * 1000000ULL / tick);
    ret->starttime = f[19];
    return 0;
}

int64_t ob_procfs_wakeups(int pid)
{
    static const char key[] = "\nvoluntary_ctxt_switches:";
    char path[64], buf[4096], *l;
    struct dirent *e;
    int64_t sum = 0;
    DIR *d;

    if (pid == 0)
        pid = (int)getpid();
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    if (!(d = opendir(path)))
        return -1;
    while ((e = readdir(d))) {
        char tpath[320];
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        snprintf(tpath, sizeof(tpath), "/proc/%d/task/%s/status", pid, e->d_name);
        if (read_file(tpath, buf, sizeof(buf)) <= 0)
            continue; /* the thread exited meanwhile */
        if ((l = strstr(buf, key)))
            sum += strtoll(l + sizeof(key) - 1, NULL, 10);
    }
    closedir(d);
    return sum;
}

void ob_procfs_mem(int pid, long *ret_rss_kb, long *ret_anon_kb)
{
    char path[64], buf[4096], *l;

    *ret_rss_kb = *ret_anon_kb = -1;
    if (pid == 0)
        snprintf(path, sizeof(path), "/proc/self/status");
    else
        snprintf(path, sizeof(path), "/proc/%d/status", pid);
    if (read_file(path, buf, sizeof(buf)) <= 0)
        return;
    if ((l = strstr(buf, "\nVmRSS:")))
        *ret_rss_kb = strtol(l + 7, NULL, 10);
    if ((l = strstr(buf, "\nRssAnon:")))
        *ret_anon_kb = strtol(l + 9, NULL, 10);
}

/*
 * ob_net.c - see ob_net.h.
 */
#include "ob_net.h"

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

/*
 * ob_procfs.h - what /proc tells about processes: their pids, names,
 * command lines, CPU times and memory, and which process holds which TCP
 * socket (/proc/net/tcp and tcp6, the socket inodes in /proc/<pid>/fd). The
 * sockets find the daemon listening on a URL's port, the broker a daemon is
 * connected to, and the client at the other end of a PostgreSQL backend.
 *
 * Reading another user's /proc/<pid>/fd needs the same user or root; what
 * cannot be read is skipped.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OB_TCP_ESTABLISHED 0x01
#define OB_TCP_LISTEN 0x0A

typedef struct {
    uint64_t inode;
    int lport, rport; /* local and remote port */
    int state;        /* OB_TCP_* (the kernel's TCP state number) */
} ob_sock;

typedef struct {
    ob_sock *v;
    size_t n;
} ob_socks;

/* Loads every TCP socket of this network namespace. Returns 0 or -errno. */
int ob_socks_load(ob_socks *ret);
void ob_socks_free(ob_socks *s);

/* The socket inodes open in pid, sorted. Returns 0 (also for a process that
 * cannot be read: none then) or -ENOMEM. The caller frees *ret. */
int ob_pid_inodes(int pid, uint64_t **ret, size_t *ret_n);

/* True if the sorted inodes hold inode. */
bool ob_inodes_has(const uint64_t *inodes, size_t n, uint64_t inode);

/* The process listening on TCP port, 0 if none was found. */
int ob_pid_listening(const ob_socks *s, int port);

/* Every pid of /proc, in directory order. The caller frees *ret. Returns 0 or -errno. */
int ob_pids(int **ret, size_t *ret_n);

/* From /proc/<pid>/stat. */
typedef struct {
    int ppid;
    int64_t cpu_us;               /* utime + stime */
    int64_t child_us;             /* cutime + cstime: children that exited and were waited for */
    unsigned long long starttime; /* clock ticks after boot: tells a reused pid */
} ob_pstat;

/* Returns 0, or -ENOENT if the process is gone (or cannot be read). */
int ob_procfs_stat(int pid, ob_pstat *ret);

/* The command line with NULs as spaces, trailing spaces removed; the name
 * (comm). Return 0 or -ENOENT. */
int ob_procfs_cmdline(int pid, char *buf, size_t len);
int ob_procfs_comm(int pid, char *buf, size_t len);

/* Wake-ups of the process: the sum of voluntary_ctxt_switches over its
 * threads (/proc/<pid>/task/<tid>/status), the times a thread went to sleep
 * and was woken again; pid 0 is this process. -1 if it cannot be read.
 * Threads that exited are not in the sum. */
int64_t ob_procfs_wakeups(int pid);

/* VmRSS and RssAnon in kB, -1 where unknown; pid 0 is this process. */
void ob_procfs_mem(int pid, long *ret_rss_kb, long *ret_anon_kb);

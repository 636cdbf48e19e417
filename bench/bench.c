/*
 * shmipc-bench: parallel ping-pong, request and response of the same size,
 * C requests in flight, over shmipc (against shmipcd's bench plugin and
 * against the library's server) and over a unix socket and TCP loopback
 * (an epoll server and client with 4-byte length framing), in one run.
 * Two payload modes, never mixed in one ratio: zero-touch (shmipc reserves
 * and flushes without writing the bytes; sockets send unfilled buffers) and
 * full (every request byte written, every response byte read and checked).
 *
 * Every transport is driven the same way: one client thread keeps C
 * requests in flight (shmipc: C streams over a few sessions, event-loop
 * style; sockets: C non-blocking connections under one epoll), a warm-up,
 * a timed window of --ms, a drain. Servers are child processes started
 * here (shmipcd is exec'ed with a generated configuration) and stopped at
 * the end, on every exit path.
 *
 * Usage: shmipc-bench [--quick] [--sizes LIST] [--concurrency LIST]
 *          [--transports LIST] [--modes LIST] [--ms N] [--warmup-ms N]
 *          [--json FILE] [--table FILE] [--plot FILE.svg]
 *          [--connect ADDR [--label NAME] [--server-pid PID]]
 *          [--sessions N] [--workers N] [--sock-threads N] [--sockbuf BYTES]
 *          [--shmipcd PATH] [--plugin PATH] [--mem memfd|file]
 * (--help explains each.)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "bench_scale.h"
#include "bench_shm.h"
#include "bench_sock.h"
#include "bench_util.h"
#include "proto/sock.h"
#include "shmipc/shmipc.h"

#define MAX_LIST 32

/* T_SHMIPCD_PROC: the same plugin in a service of shmipcd's with isolation = "process". */
enum transport { T_SHMIPCD, T_SHMIPCD_PROC, T_LIB, T_UDS, T_TCP, T_COUNT };
static const char *const tr_name[T_COUNT] = {"shmipc-shmipcd", "shmipc-shmipcd-proc", "shmipc-lib",
                                             "uds", "tcp"};
static const char *const mode_name[2] = {"zero-touch", "full"};

/* Defaults chosen by measurement on the 2-CPU machine (see --help). */
#define DEF_SESSIONS 1
#define DEF_WORKERS 1
#define DEF_SOCK_THREADS 1
#define DEF_SOCKBUF (4 << 20)

struct opts {
    size_t sizes[MAX_LIST];
    unsigned nsizes;
    unsigned concs[MAX_LIST];
    unsigned nconcs;
    int transports[T_COUNT]; /* 1 = run */
    int modes[2];
    int ms, warm_ms;
    const char *connect, *label;
    pid_t server_pid;
    const char *json, *table, *plot;
    unsigned sessions, workers, sock_threads;
    int sockbuf;
    const char *shmipcd, *plugin;
    int file_mode;
    size_t reserve_chunk;
    size_t max_slice; /* 0: shmipc's default classes */
    unsigned spin_us; /* low-latency mode of the shmipc client and servers */
    unsigned clients; /* --clients: the scale run (bench_scale.c) instead of rows */
    size_t pool_bytes;
    unsigned trials;
    int scale_uds; /* --scale-uds: that run over unix sockets instead */
};

static char tmpdir[64];
static pid_t shmipcd_pid; /* for its private directory, should it be killed */

/* ---- option parsing ---- */

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: shmipc-bench [options]\n"
        "  --quick               64 B and 64 KiB, both modes, shmipc-lib and uds, 64 in flight\n"
        "  --sizes LIST          request = response sizes, e.g. 64,512,1K,4K,64K,1M,4M\n"
        "                        (default: 64,512,1K,4K,16K,32K,64K,256K,512K,1M,4M)\n"
        "  --concurrency LIST    requests in flight (default 1,8,64,200)\n"
        "  --transports LIST     shmipc-shmipcd,shmipc-shmipcd-proc,shmipc-lib,uds,tcp\n"
        "                        (default all; -proc: a process-mode service)\n"
        "  --modes LIST          zero-touch,full (default both)\n"
        "  --ms N                timed window per row, ms (default 1000)\n"
        "  --warmup-ms N         warm-up per row, ms; every request slot also completes\n"
        "                        one round trip first (default 100)\n"
        "  --json FILE           one JSON object per row and line\n"
        "  --table FILE          the table, also printed on stdout\n"
        "  --plot FILE.svg       ns/op by size, log scale (needs gnuplot; FILE.png works too)\n"
        "  --connect ADDR        run only the shmipc client against a server speaking the\n"
        "                        protocol (unix:/path or tcp:host:port)\n"
        "  --label NAME          transport name of --connect rows (default shmipc-lib)\n"
        "  --spin-us N           low-latency mode: the shmipc client and both shmipc\n"
        "                        servers poll their queues N us before sleeping (their\n"
        "                        CPU per op shows what it costs; default 0 = off)\n"
        "  --server-pid PID      count that process's CPU time for --connect rows\n"
        "  --sessions N          shmipc sessions per client, capped at C (default %d)\n"
        "  --workers N           shmipcd worker threads (default %d)\n"
        "  --sock-threads N      unix-socket/TCP server threads (default %d)\n"
        "  --sockbuf BYTES       SO_SNDBUF and SO_RCVBUF of the sockets, 0: system default\n"
        "                        (default %d)\n"
        "  --shmipcd PATH        the shmipcd binary (default: next to this program)\n"
        "  --plugin PATH         the bench plugin (default: ../plugins/bench.so from here)\n"
        "  --mem memfd|file      shmipc memory mode (default memfd; file for tcp: addresses)\n"
        "  --reserve-chunk BYTES full mode: bytes per shmipc_stream_reserve() (default and\n"
        "                        most the largest slice; smaller ones let the pool fall\n"
        "                        back to smaller slice classes)\n"
        "  --max-slice BYTES     the largest slice class instead of shmipc's 131052 bytes\n"
        "                        (a multiple of 4): fewer slices per large message\n"
        "  --clients N           the scale run instead of the table: N client processes\n"
        "                        (at least 11), one session and pool each, blocking calls\n"
        "                        of the first --sizes size (default 64) against shmipcd:\n"
        "                        req/s with 10 and with N calling, shmipcd's memory per idle\n"
        "                        session, connect times with N - 1 sessions open (--ms is\n"
        "                        each window, default 3000)\n"
        "  --pool-bytes BYTES    --clients: each client's pool (default 1M)\n"
        "  --connect-trials N    --clients: connects timed with N - 1 open (default 200)\n"
        "  --scale-uds           --clients: the same run over unix sockets (one connection\n"
        "                        per client process, blocking write and read, against the\n"
        "                        epoll echo server): the baseline\n",
        DEF_SESSIONS, DEF_WORKERS, DEF_SOCK_THREADS, DEF_SOCKBUF);
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s)
        return -1;
    if (*end == 'K' || *end == 'k')
        v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, end++;
    if (*end == 'i')
        end++;
    if (*end == 'B')
        end++;
    if (*end != '\0' || v == 0 || v > (64ull << 20))
        return -1;
    *out = (size_t)v;
    return 0;
}

/* Splits a comma list; calls fn on each item. */
static int each_item(const char *list, int (*fn)(const char *item, void *arg), void *arg)
{
    char buf[512];
    if (strlen(list) >= sizeof(buf))
        return -1;
    strcpy(buf, list);
    char *save = NULL;
    int n = 0;
    for (char *t = strtok_r(buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save), n++)
        if (fn(t, arg) < 0)
            return -1;
    return n > 0 ? 0 : -1;
}

static int add_size(const char *t, void *arg)
{
    struct opts *o = arg;
    if (o->nsizes == MAX_LIST || parse_size(t, &o->sizes[o->nsizes]) < 0)
        return -1;
    o->nsizes++;
    return 0;
}

static int add_conc(const char *t, void *arg)
{
    struct opts *o = arg;
    char *end;
    unsigned long v = strtoul(t, &end, 10);
    if (o->nconcs == MAX_LIST || *end != '\0' || v == 0 || v > 4096)
        return -1;
    o->concs[o->nconcs++] = (unsigned)v;
    return 0;
}

static int add_transport(const char *t, void *arg)
{
    struct opts *o = arg;
    if (strcmp(t, "all") == 0) {
        for (int i = 0; i < T_COUNT; i++)
            o->transports[i] = 1;
        return 0;
    }
    static const struct {
        const char *name;
        enum transport t;
    } alias[] = {
        {"shmipc-shmipcd", T_SHMIPCD},
        {"shmipcd", T_SHMIPCD},
        {"shmipc-shmipcd-proc", T_SHMIPCD_PROC},
        {"shmipcd-proc", T_SHMIPCD_PROC},
        {"shmipc-lib", T_LIB},
        {"lib", T_LIB},
        {"uds", T_UDS},
        {"unix", T_UDS},
        {"tcp", T_TCP},
    };
    for (size_t i = 0; i < sizeof(alias) / sizeof(alias[0]); i++) {
        if (strcmp(t, alias[i].name) == 0) {
            o->transports[alias[i].t] = 1;
            return 0;
        }
    }
    return -1;
}

static int add_mode(const char *t, void *arg)
{
    struct opts *o = arg;
    if (strcmp(t, "zero-touch") == 0 || strcmp(t, "zero") == 0)
        o->modes[MODE_ZERO] = 1;
    else if (strcmp(t, "full") == 0)
        o->modes[MODE_FULL] = 1;
    else
        return -1;
    return 0;
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const size_t def_sizes[] = {64,    512,    1024,   4096,    16384,  32768,
                                       65536, 262144, 524288, 1048576, 4194304};
    static const unsigned def_concs[] = {1, 8, 64, 200};
    memset(o, 0, sizeof(*o));
    o->ms = 1000;
    o->warm_ms = 100;
    o->sessions = DEF_SESSIONS;
    o->workers = DEF_WORKERS;
    o->sock_threads = DEF_SOCK_THREADS;
    o->sockbuf = DEF_SOCKBUF;
    int quick = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
    if (quick) {
        o->sizes[0] = 64;
        o->sizes[1] = 65536;
        o->nsizes = 2;
        o->concs[0] = 64;
        o->nconcs = 1;
        o->transports[T_LIB] = o->transports[T_UDS] = 1;
        o->modes[0] = o->modes[1] = 1;
    }
    int set_sizes = 0, set_concs = 0, set_tr = 0, set_modes = 0, set_ms = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--quick") == 0)
            continue;
        if (strcmp(a, "--scale-uds") == 0) {
            o->scale_uds = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "--version") == 0) {
            printf("shmipc-bench (shmipc) %s\n", SHMIPC_VERSION);
            exit(0);
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "shmipc-bench: %s: unknown option or missing value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int bad = 0;
        unsigned u;
        if (strcmp(a, "--sizes") == 0) {
            o->nsizes = 0;
            bad = each_item(v, add_size, o) < 0;
            set_sizes = 1;
        } else if (strcmp(a, "--concurrency") == 0 || strcmp(a, "--streams") == 0) {
            o->nconcs = 0;
            bad = each_item(v, add_conc, o) < 0;
            set_concs = 1;
        } else if (strcmp(a, "--transports") == 0) {
            memset(o->transports, 0, sizeof(o->transports));
            bad = each_item(v, add_transport, o) < 0;
            set_tr = 1;
        } else if (strcmp(a, "--modes") == 0) {
            memset(o->modes, 0, sizeof(o->modes));
            bad = each_item(v, add_mode, o) < 0;
            set_modes = 1;
        } else if (strcmp(a, "--ms") == 0) {
            bad = parse_uint(v, 10, 3600000, &u) < 0;
            o->ms = (int)u;
            set_ms = 1;
        } else if (strcmp(a, "--warmup-ms") == 0) {
            bad = parse_uint(v, 0, 600000, &u) < 0;
            o->warm_ms = (int)u;
        } else if (strcmp(a, "--json") == 0) {
            o->json = v;
        } else if (strcmp(a, "--table") == 0) {
            o->table = v;
        } else if (strcmp(a, "--plot") == 0) {
            o->plot = v;
        } else if (strcmp(a, "--connect") == 0) {
            o->connect = v;
        } else if (strcmp(a, "--label") == 0) {
            o->label = v;
        } else if (strcmp(a, "--server-pid") == 0) {
            bad = parse_uint(v, 1, INT_MAX, &u) < 0;
            o->server_pid = (pid_t)u;
        } else if (strcmp(a, "--spin-us") == 0) {
            bad = parse_uint(v, 0, 1000000, &o->spin_us) < 0;
        } else if (strcmp(a, "--sessions") == 0) {
            bad = parse_uint(v, 1, 64, &o->sessions) < 0;
        } else if (strcmp(a, "--workers") == 0) {
            bad = parse_uint(v, 1, 64, &o->workers) < 0;
        } else if (strcmp(a, "--sock-threads") == 0 || strcmp(a, "--uds-threads") == 0) {
            bad = parse_uint(v, 1, 64, &o->sock_threads) < 0;
        } else if (strcmp(a, "--sockbuf") == 0) {
            bad = parse_uint(v, 0, 1u << 30, &u) < 0;
            o->sockbuf = (int)u;
        } else if (strcmp(a, "--shmipcd") == 0) {
            o->shmipcd = v;
        } else if (strcmp(a, "--plugin") == 0) {
            o->plugin = v;
        } else if (strcmp(a, "--reserve-chunk") == 0) {
            bad = parse_size(v, &o->reserve_chunk) < 0 || o->reserve_chunk > 64u << 20;
        } else if (strcmp(a, "--max-slice") == 0) {
            bad = parse_size(v, &o->max_slice) < 0 || o->max_slice < 32752 ||
                  o->max_slice > 64u << 20 || o->max_slice % 4 != 0;
        } else if (strcmp(a, "--clients") == 0) {
            bad = parse_uint(v, 11, 100000, &o->clients) < 0;
        } else if (strcmp(a, "--pool-bytes") == 0) {
            bad = parse_size(v, &o->pool_bytes) < 0 || o->pool_bytes < (64u << 10);
        } else if (strcmp(a, "--connect-trials") == 0) {
            bad = parse_uint(v, 1, 100000, &o->trials) < 0;
        } else if (strcmp(a, "--mem") == 0) {
            bad = strcmp(v, "memfd") != 0 && strcmp(v, "file") != 0;
            o->file_mode = strcmp(v, "file") == 0;
        } else {
            fprintf(stderr, "shmipc-bench: unknown option %s (try --help)\n", a);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "shmipc-bench: bad value for %s: %s\n", a, v);
            return -1;
        }
    }
    if (!set_sizes && o->nsizes == 0) {
        memcpy(o->sizes, def_sizes, sizeof(def_sizes));
        o->nsizes = sizeof(def_sizes) / sizeof(def_sizes[0]);
    }
    if (!set_concs && o->nconcs == 0) {
        memcpy(o->concs, def_concs, sizeof(def_concs));
        o->nconcs = sizeof(def_concs) / sizeof(def_concs[0]);
    }
    if (!set_tr && !quick)
        for (int i = 0; i < T_COUNT; i++)
            o->transports[i] = 1;
    if (!set_modes && !quick)
        o->modes[0] = o->modes[1] = 1;
    if (o->clients) {
        /* The scale run: shmipcd only (or the unix-socket server). */
        memset(o->transports, 0, sizeof(o->transports));
        o->transports[o->scale_uds ? T_UDS : T_SHMIPCD] = 1;
        if (!set_ms)
            o->ms = 3000;
        if (!set_sizes)
            o->sizes[0] = 64;
        if (o->pool_bytes == 0)
            o->pool_bytes = 1u << 20;
        if (o->trials == 0)
            o->trials = 200;
        o->connect = NULL;
    }
    if (o->connect != NULL) {
        /* Only the shmipc client, against the given server. */
        memset(o->transports, 0, sizeof(o->transports));
        o->transports[T_LIB] = 1;
        if (strncmp(o->connect, "tcp:", 4) == 0)
            o->file_mode = 1; /* memfds travel only over unix sockets */
    }
    return 0;
}

/* ---- temp dir and paths ---- */

/* Removes a flat directory and what is in it. */
static void rm_flat_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char p[PATH_MAX + 256];
            snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

static void tmpdir_remove(void)
{
    if (tmpdir[0] == '\0')
        return;
    rm_flat_dir(tmpdir);
    tmpdir[0] = '\0';
}

/* shmipcd keeps private copies of its plugins in /tmp/shmipcd-PID-XXXXXX
 * and removes them when it stops; one killed (it did not stop in time, or
 * we are on an error path) leaves them: remove them for it. */
static void shmipcd_leftovers(void)
{
    if (shmipcd_pid <= 0)
        return;
    char prefix[64];
    int n = snprintf(prefix, sizeof(prefix), "shmipcd-%d-", (int)shmipcd_pid);
    DIR *d = opendir("/tmp");
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, prefix, (size_t)n) == 0 && strlen(e->d_name) == (size_t)n + 6) {
                char p[PATH_MAX];
                snprintf(p, sizeof(p), "/tmp/%s", e->d_name);
                rm_flat_dir(p);
            }
        }
        closedir(d);
    }
    shmipcd_pid = 0;
}

static void cleanup_at_exit(void)
{
    child_kill_all();
    shmipcd_leftovers();
    tmpdir_remove();
}

static void on_signal(int sig)
{
    (void)sig;
    bench_stop = 1;
}

/* dir of this program + rel, resolved; 0 or -1. */
static int beside_exe(const char *rel, char *out, size_t cap)
{
    char exe[PATH_MAX], p[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    snprintf(p, sizeof(p), "%s/%s", dirname(exe), rel);
    char *r = realpath(p, NULL);
    if (r == NULL)
        return -1;
    snprintf(out, cap, "%s", r);
    free(r);
    return 0;
}

/* ---- shmipcd ---- */

/* addr_proc: also a process-mode service of the plugin there (NULL: none). */
static int shmipcd_start(const struct opts *o, const char *addr, const char *addr_proc, pid_t *pid)
{
    char bin[PATH_MAX], plugin[PATH_MAX], conf[PATH_MAX], log[PATH_MAX], sock[PATH_MAX];
    if (o->shmipcd != NULL)
        snprintf(bin, sizeof(bin), "%s", o->shmipcd);
    else if (beside_exe("shmipcd", bin, sizeof(bin)) < 0)
        snprintf(bin, sizeof(bin), "shmipcd (not found next to this program)");
    if (o->plugin != NULL) {
        char *r = realpath(o->plugin, NULL);
        snprintf(plugin, sizeof(plugin), "%s", r ? r : o->plugin);
        free(r);
    } else if (beside_exe("../plugins/bench.so", plugin, sizeof(plugin)) < 0) {
        snprintf(plugin, sizeof(plugin), "bench.so (not found in ../plugins from here)");
    }
    if (access(bin, X_OK) != 0 || access(plugin, R_OK) != 0) {
        fprintf(stderr, "shmipc-bench: shmipcd transport needs %s and %s (--shmipcd, --plugin)\n",
                bin, plugin);
        return -ENOENT;
    }
    snprintf(conf, sizeof(conf), "%s/shmipcd.conf", tmpdir);
    snprintf(log, sizeof(log), "%s/shmipcd.log", tmpdir);
    snprintf(sock, sizeof(sock), "%s", addr + strlen("unix:"));
    FILE *f = fopen(conf, "w");
    if (f == NULL)
        return -errno;
    fprintf(f,
            "# generated by shmipc-bench\n"
            "workers = %u;\n"
            "spin_us = %u;\n"
            "log = { level = \"warn\"; };\n"
            "limits = { max_sessions = 4096; max_pool_bytes = 4294967295L;\n"
            "           max_event_bytes = 67108864; handshake_timeout_ms = 5000;\n"
            "           drain_timeout_ms = 1000; };\n"
            "services = ( { name = \"bench\"; listen = \"%s\"; mode = \"0600\";\n"
            "               plugin = \"%s\"; config = { max_slice = %u; }; }",
            o->workers, o->spin_us, addr, plugin, shm_max_slice());
    if (addr_proc != NULL)
        fprintf(f,
                ",\n             { name = \"bench-proc\"; listen = \"%s\"; mode = \"0600\";\n"
                "               plugin = \"%s\"; isolation = \"process\";\n"
                "               config = { max_slice = %u; }; }",
                addr_proc, plugin, shm_max_slice());
    fprintf(f, " );\n");
    if (fclose(f) != 0)
        return -errno;
    pid_t parent = getpid();
    pid_t c = fork();
    if (c < 0)
        return -errno;
    if (c == 0) {
        child_die_with_parent(parent);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        execl(bin, "shmipcd", "-c", conf, (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    child_track(c);
    shmipcd_pid = c;
    /* Wait (bounded) for the socket, then check the plugin answers. */
    uint64_t deadline = now_ns() + 10000000000ull;
    struct stat st;
    while (stat(sock, &st) != 0 && now_ns() < deadline && !bench_stop && child_alive(c)) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    char err[256] = "";
    int rc = child_alive(c) ? shm_probe(addr, 0, 5000, err, sizeof(err)) : -ECHILD;
    if (rc == 0 && addr_proc != NULL)
        rc = shm_probe(addr_proc, 0, 5000, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "shmipc-bench: shmipcd did not come up: %s; its log (%s):\n",
                err[0] ? err : "it exited", log);
        char cmd[PATH_MAX + 32];
        snprintf(cmd, sizeof(cmd), "tail -n 20 '%s' >&2", log);
        if (system(cmd) != 0)
            fprintf(stderr, "(no log)\n");
        child_stop(c, 2000);
        shmipcd_leftovers();
        return rc;
    }
    *pid = c;
    return 0;
}

/* ---- results ---- */

static struct row_result *results;
static size_t nresults, capresults;

static int keep_result(const struct row_result *r)
{
    if (nresults == capresults) {
        size_t cap = capresults ? capresults * 2 : 64;
        struct row_result *n = realloc(results, cap * sizeof(*n));
        if (n == NULL)
            return -ENOMEM;
        results = n;
        capresults = cap;
    }
    results[nresults++] = *r;
    return 0;
}

static const struct row_result *find_result(const char *tr, enum bench_mode m, size_t size,
                                            unsigned conc)
{
    for (size_t i = 0; i < nresults; i++)
        if (strcmp(results[i].transport, tr) == 0 && results[i].mode == m &&
            results[i].size == size && results[i].conc == conc)
            return &results[i];
    return NULL;
}

static void json_row(FILE *f, const struct row_result *r, const struct opts *o)
{
    fprintf(f,
            "{\"transport\":\"%s\",\"mode\":\"%s\",\"size\":%zu,\"concurrency\":%u,"
            "\"ops\":%llu,\"ns_per_op\":%.1f,\"p50_us\":%.2f,\"p99_us\":%.2f,"
            "\"wakeups_per_op\":%.4f,\"sleeps_per_op\":%.4f,\"cpu_client_us_per_op\":%.3f,",
            r->transport, mode_name[r->mode], r->size, r->conc, (unsigned long long)r->ops,
            r->ns_per_op, r->p50_us, r->p99_us, r->wakeups_per_op, r->sleeps_per_op,
            r->cpu_client_us);
    if (r->cpu_server_us >= 0)
        fprintf(f, "\"cpu_server_us_per_op\":%.3f,", r->cpu_server_us);
    else
        fprintf(f, "\"cpu_server_us_per_op\":null,");
    int shm = strncmp(r->transport, "uds", 3) != 0 && strncmp(r->transport, "tcp", 3) != 0;
    fprintf(f, "\"wall_s\":%.4f,\"errors\":%llu,\"cpu_other_pct\":%.1f,", r->wall_s,
            (unsigned long long)r->errors, r->other_cpu_pct);
    if (shm)
        fprintf(f, "\"sessions\":%u,\"fallbacks\":%llu,\"spin_us\":%u", r->sessions,
                (unsigned long long)r->fallbacks, o->spin_us);
    else
        fprintf(f, "\"connections\":%u,\"server_threads\":%u", r->sessions, o->sock_threads);
    if (strncmp(r->transport, tr_name[T_SHMIPCD], strlen(tr_name[T_SHMIPCD])) == 0)
        fprintf(f, ",\"shmipcd_workers\":%u", o->workers);
    fprintf(f, "}\n");
    fflush(f);
}

static const char *size_text(size_t s, char *buf, size_t cap)
{
    if (s >= (1u << 20) && s % (1u << 20) == 0)
        snprintf(buf, cap, "%zu MiB", s >> 20);
    else if (s >= 1024 && s % 1024 == 0)
        snprintf(buf, cap, "%zu KiB", s >> 10);
    else
        snprintf(buf, cap, "%zu B", s);
    return buf;
}

static void print_table(FILE *f, const struct opts *o)
{
    fprintf(f,
            "shmipc-bench: ping-pong, request and response of the same size, C requests in flight\n"
            "driven by one client thread per transport; %d ms per row after a warm-up; %ld CPUs\n",
            o->ms, sysconf(_SC_NPROCESSORS_ONLN));
    if (o->connect)
        fprintf(f, "  %s: the shmipc client against %s, %u session(s) per client\n",
                o->label ? o->label : tr_name[T_LIB], o->connect, o->sessions);
    else
        fprintf(
            f,
            "  shmipc: %u session(s) per client (at most C), event-loop style (no I/O thread);\n"
            "          shmipc-lib = library server (1 thread), shmipc-shmipcd = shmipcd with "
            "%u worker(s)\n"
            "          (-proc: in a worker process of its own, isolation = \"process\")\n"
            "  uds/tcp: epoll server with %u thread(s), 4-byte length framing; SO_SNDBUF/"
            "SO_RCVBUF %d;\n"
            "          tcp on 127.0.0.1 with TCP_NODELAY\n",
            o->sessions, o->workers, o->sock_threads, o->sockbuf);
    fprintf(f, "  shmipc pool: slice classes of 8172, 32748 and %u bytes%s\n", shm_max_slice(),
            shm_max_slice() == 131052 ? " (shmipc's defaults)" : "");
    if (o->spin_us)
        fprintf(f,
                "  low-latency mode: the shmipc client and servers poll their queues %u us\n"
                "          before sleeping (spin_us); the CPU it burns is in cli and srv\n",
                o->spin_us);
    fprintf(f, "  ns/op     wall time / round trips (all C in flight together)\n"
               "  p50, p99  one round trip, from building the request to the checked response\n"
               "  wake/op   shmipc: Polling events sent + received by the client per round trip;\n"
               "            uds/tcp: epoll_wait returns of the client per round trip\n"
               "  slp/op    times the client or the server blocked (voluntary context switches)\n"
               "            per round trip: the wake-ups that cost a scheduler round trip\n"
               "  cli, srv  CPU time (us) per round trip of the client and the server process\n"
               "  uds/x     uds ns/op / this row's ns/op, same size, C and mode (> 1: faster)\n"
               "  oth%%      CPU other processes used meanwhile, %% of one CPU (noise if large)\n");
    for (int m = 0; m < 2; m++) {
        if (!o->modes[m])
            continue;
        fprintf(f, "\n== %s: %s\n", mode_name[m],
                m == MODE_ZERO
                    ? "shmipc reserves and flushes without writing the bytes; sockets send "
                      "unfilled buffers (the kernel still copies them)"
                    : "every request byte written, every response byte read and checked");
        fprintf(f, "%8s %4s  %-19s %9s %10s %9s %9s %7s %7s %8s %8s %6s %5s\n", "size", "C",
                "transport", "ops", "ns/op", "p50 us", "p99 us", "wake/op", "slp/op", "cli us",
                "srv us", "uds/x", "oth%");
        for (unsigned si = 0; si < o->nsizes; si++) {
            int printed = 0;
            for (unsigned ci = 0; ci < o->nconcs; ci++) {
                const struct row_result *u =
                    find_result(tr_name[T_UDS], (enum bench_mode)m, o->sizes[si], o->concs[ci]);
                for (size_t i = 0; i < nresults; i++) {
                    const struct row_result *r = &results[i];
                    if (r->mode != (enum bench_mode)m || r->size != o->sizes[si] ||
                        r->conc != o->concs[ci])
                        continue;
                    char sz[32], srv[16], ratio[16] = "";
                    if (r->cpu_server_us >= 0)
                        snprintf(srv, sizeof(srv), "%8.2f", r->cpu_server_us);
                    else
                        snprintf(srv, sizeof(srv), "%8s", "-");
                    if (u != NULL && u != r && r->ns_per_op > 0 && u->ns_per_op > 0)
                        snprintf(ratio, sizeof(ratio), "%6.2f", u->ns_per_op / r->ns_per_op);
                    fprintf(f,
                            "%8s %4u  %-19s %9llu %10.0f %9.1f %9.1f %7.2f %7.2f %8.2f %s %6s "
                            "%5.0f%s\n",
                            size_text(r->size, sz, sizeof(sz)), r->conc, r->transport,
                            (unsigned long long)r->ops, r->ns_per_op, r->p50_us, r->p99_us,
                            r->wakeups_per_op, r->sleeps_per_op, r->cpu_client_us, srv, ratio,
                            r->other_cpu_pct,
                            r->errors      ? "  ERRORS"
                            : r->fallbacks ? "  fallbacks"
                                           : "");
                    printed = 1;
                }
            }
            if (printed && si + 1 < o->nsizes)
                fprintf(f, "\n");
        }
    }
}

/* ---- plot ---- */

static int find_in_path(const char *name, char *out, size_t cap)
{
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path ? path : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(buf, ":", &save); d != NULL; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, cap, "%s/%s", d, name);
        if (access(out, X_OK) == 0)
            return 0;
    }
    return -1;
}

static int plot(const struct opts *o)
{
    char gp[PATH_MAX];
    if (find_in_path("gnuplot", gp, sizeof(gp)) < 0) {
        fprintf(stderr,
                "shmipc-bench: gnuplot not found: skipping the plot %s "
                "(apt-get install gnuplot-nox)\n",
                o->plot);
        return 0;
    }
    char script[PATH_MAX];
    snprintf(script, sizeof(script), "%s/plot.gp", tmpdir);
    FILE *f = fopen(script, "w");
    if (f == NULL)
        return -errno;
    static const char *const color[T_COUNT] = {"#2ca02c", "#9467bd", "#1f77b4", "#d62728",
                                               "#ff7f0e"};
    unsigned nm = o->modes[0] + o->modes[1];
    size_t pl = strlen(o->plot);
    int png = pl > 4 && strcmp(o->plot + pl - 4, ".png") == 0; /* else SVG */
    fprintf(f, "set terminal %s size %u,%u %sfont 'sans,10' background '#ffffff'\n",
            png ? "pngcairo" : "svg", 360 * o->nconcs + 80, 380 * nm + 60, png ? "" : "dynamic ");
    fprintf(f, "set output '%s'\n", o->plot);
    fprintf(f, "set logscale xy\nset grid\nset key top left font ',9'\nset format y '%%.0s%%c'\n"
               "set xlabel 'size (bytes)'\nset ylabel 'ns per round trip'\n");
    fprintf(f, "set xtics (");
    for (unsigned si = 0; si < o->nsizes; si++) {
        char sz[32];
        size_text(o->sizes[si], sz, sizeof(sz));
        fprintf(f, "%s'%s' %zu", si ? ", " : "", sz, o->sizes[si]);
    }
    fprintf(f, ") rotate by -45\n");
    /* One data block per (mode, C, transport). */
    for (int m = 0; m < 2; m++)
        for (unsigned ci = 0; ci < o->nconcs; ci++)
            for (int t = 0; t < T_COUNT; t++) {
                const char *tn = o->connect && t == T_LIB && o->label ? o->label : tr_name[t];
                fprintf(f, "$d%d_%u_%d << EOD\n", m, ci, t);
                for (unsigned si = 0; si < o->nsizes; si++) {
                    const struct row_result *r =
                        find_result(tn, (enum bench_mode)m, o->sizes[si], o->concs[ci]);
                    if (r != NULL && r->ns_per_op > 0)
                        fprintf(f, "%zu %.1f\n", r->size, r->ns_per_op);
                }
                fprintf(f, "EOD\n");
            }
    fprintf(f,
            "set multiplot layout %u,%u title 'shmipc-bench: ns/op by size, shmipc vs unix "
            "socket (log scale)'\n",
            nm, o->nconcs);
    for (int m = 0; m < 2; m++) {
        if (!o->modes[m])
            continue;
        for (unsigned ci = 0; ci < o->nconcs; ci++) {
            fprintf(f, "set title '%s, C = %u'\nplot ", mode_name[m], o->concs[ci]);
            int first = 1;
            for (int t = 0; t < T_COUNT; t++) {
                const char *tn = o->connect && t == T_LIB && o->label ? o->label : tr_name[t];
                int any = 0;
                for (unsigned si = 0; si < o->nsizes && !any; si++)
                    any = find_result(tn, (enum bench_mode)m, o->sizes[si], o->concs[ci]) != NULL;
                if (!any)
                    continue;
                fprintf(f,
                        "%s$d%d_%u_%d using 1:2 with linespoints lw 2 pt 7 ps 0.6 lc rgb '%s'"
                        "%s title '%s'",
                        first ? "" : ", ", m, ci, t, color[t], t == T_TCP ? " dt 2" : "", tn);
                first = 0;
            }
            if (first)
                fprintf(f, "NaN notitle");
            fprintf(f, "\n");
        }
    }
    fprintf(f, "unset multiplot\n");
    if (fclose(f) != 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        execl(gp, "gnuplot", script, (char *)NULL);
        _exit(127);
    }
    child_track(pid);
    uint64_t deadline = now_ns() + 60000000000ull;
    int st = -1;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (now_ns() > deadline) {
            child_stop(pid, 100);
            st = -1;
            break;
        }
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "shmipc-bench: gnuplot failed on %s\n", script);
        return -EIO;
    }
    return 0;
}

/* ---- the run ---- */

/* A child process of parent (shmipcd's worker process), from /proc; 0
 * when there is none. */
static pid_t child_of(pid_t parent)
{
    DIR *d = opendir("/proc");
    pid_t found = 0;
    struct dirent *e;
    while (d != NULL && found == 0 && (e = readdir(d)) != NULL) {
        char path[288], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
        FILE *f = e->d_name[0] >= '1' && e->d_name[0] <= '9' ? fopen(path, "re") : NULL;
        if (f == NULL)
            continue;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        const char *rp = strrchr(buf, ')'); /* the name may hold anything */
        int ppid;
        if (rp != NULL && sscanf(rp + 1, " %*c %d", &ppid) == 1 && ppid == (int)parent)
            found = (pid_t)atoi(e->d_name);
    }
    if (d != NULL)
        closedir(d);
    return found;
}

struct servers {
    pid_t pid[T_COUNT]; /* pid[T_SHMIPCD] is shmipcd's for both shmipcd transports */
    pid_t proc_pid;     /* the worker process of the process-mode service (its CPU) */
    char addr_lib[128], addr_shmipcd[128], addr_proc[128];
    struct sock_server uds, tcp;
};

static int start_servers(const struct opts *o, struct servers *sv)
{
    int rc;
    char err[256];
    if (o->transports[T_LIB] && o->connect == NULL) {
        snprintf(sv->addr_lib, sizeof(sv->addr_lib), "unix:%s/lib.sock", tmpdir);
        if ((rc = shm_lib_server_start(sv->addr_lib, (int)o->spin_us, &sv->pid[T_LIB])) < 0)
            return rc;
        if ((rc = shm_probe(sv->addr_lib, o->file_mode, 5000, err, sizeof(err))) < 0) {
            fprintf(stderr, "shmipc-bench: library server: %s\n", err);
            return rc;
        }
    }
    if (o->connect != NULL) {
        snprintf(sv->addr_lib, sizeof(sv->addr_lib), "%s", o->connect);
        sv->pid[T_LIB] = o->server_pid;
        if ((rc = shm_probe(o->connect, o->file_mode, 5000, err, sizeof(err))) < 0) {
            fprintf(stderr, "shmipc-bench: %s\n", err);
            return rc;
        }
    }
    if (o->transports[T_SHMIPCD] || o->transports[T_SHMIPCD_PROC]) {
        snprintf(sv->addr_shmipcd, sizeof(sv->addr_shmipcd), "unix:%s/shmipcd.sock", tmpdir);
        snprintf(sv->addr_proc, sizeof(sv->addr_proc), "unix:%s/shmipcd-proc.sock", tmpdir);
        if ((rc = shmipcd_start(o, sv->addr_shmipcd,
                                o->transports[T_SHMIPCD_PROC] ? sv->addr_proc : NULL,
                                &sv->pid[T_SHMIPCD])) < 0)
            return rc;
        sv->proc_pid = o->transports[T_SHMIPCD_PROC] ? child_of(sv->pid[T_SHMIPCD]) : 0;
    }
    if (o->transports[T_UDS]) {
        char path[108];
        snprintf(path, sizeof(path), "%s/uds.sock", tmpdir);
        struct sock_opts so = {
            .tcp = 0, .path = path, .threads = o->sock_threads, .sockbuf = o->sockbuf};
        if ((rc = sock_server_start(&so, &sv->uds)) < 0) {
            fprintf(stderr, "shmipc-bench: unix-socket server: %s\n", strerror(-rc));
            return rc;
        }
        sv->pid[T_UDS] = sv->uds.pid;
    }
    if (o->transports[T_TCP]) {
        struct sock_opts so = {.tcp = 1, .threads = o->sock_threads, .sockbuf = o->sockbuf};
        if ((rc = sock_server_start(&so, &sv->tcp)) < 0) {
            fprintf(stderr, "shmipc-bench: tcp server: %s\n", strerror(-rc));
            return rc;
        }
        sv->pid[T_TCP] = sv->tcp.pid;
    }
    return 0;
}

/* shmipcd logs at "warn": anything it said is worth seeing. */
static void show_shmipcd_log(void)
{
    char path[PATH_MAX], line[512];
    snprintf(path, sizeof(path), "%s/shmipcd.log", tmpdir);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    unsigned n = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (n++ == 0)
            fprintf(stderr, "shmipc-bench: shmipcd's log (level warn):\n");
        if (n <= 40)
            fprintf(stderr, "  %s", line);
    }
    if (n > 40)
        fprintf(stderr, "  ... %u lines in all\n", n);
    fclose(f);
}

/* Stops the children; 0 when each exited cleanly. */
static int stop_servers(const struct opts *o, struct servers *sv)
{
    int bad = 0;
    for (int t = 0; t < T_COUNT; t++) {
        if (sv->pid[t] <= 0 || (t == T_LIB && o->connect != NULL))
            continue;
        int st = child_stop(sv->pid[t], 5000);
        if (t == T_SHMIPCD) {
            show_shmipcd_log();
            if (WIFSIGNALED(st))
                shmipcd_leftovers();
            else
                shmipcd_pid = 0;
        }
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "shmipc-bench: the %s server ended badly (status %#x)\n", tr_name[t],
                    st);
            bad = 1;
        }
        sv->pid[t] = 0;
    }
    return bad ? -1 : 0;
}

struct conn {
    struct shm_client *shm;
    struct sock_client *sock;
};

static int conn_open(const struct opts *o, struct servers *sv, int t, size_t size, unsigned conc,
                     struct conn *c)
{
    memset(c, 0, sizeof(*c));
    if (t == T_UDS || t == T_TCP)
        return sock_client_open(t == T_UDS ? &sv->uds : &sv->tcp, size, conc, &c->sock);
    struct shm_client_opts so = {.address = t == T_LIB            ? sv->addr_lib
                                            : t == T_SHMIPCD_PROC ? sv->addr_proc
                                                                  : sv->addr_shmipcd,
                                 .sessions = o->sessions,
                                 .file_mode = t == T_LIB ? o->file_mode : 0,
                                 .reserve_chunk = o->reserve_chunk,
                                 .spin_us = (int)o->spin_us};
    return shm_client_open(&so, size, conc, &c->shm);
}

static void conn_close(struct conn *c)
{
    shm_client_close(c->shm);
    sock_client_close(c->sock);
    memset(c, 0, sizeof(*c));
}

static int run_rows(const struct opts *o, struct servers *sv, FILE *json)
{
    unsigned ntr = 0, nmodes = o->modes[0] + o->modes[1];
    for (int t = 0; t < T_COUNT; t++)
        ntr += o->transports[t];
    unsigned total = o->nsizes * o->nconcs * ntr * nmodes, done = 0;
    uint64_t t0 = now_ns();
    int errors = 0, tty = isatty(STDERR_FILENO);
    for (unsigned si = 0; si < o->nsizes && !bench_stop; si++) {
        for (unsigned ci = 0; ci < o->nconcs && !bench_stop; ci++) {
            for (int t = 0; t < T_COUNT && !bench_stop; t++) {
                if (!o->transports[t])
                    continue;
                const char *tn = o->connect && o->label ? o->label : tr_name[t];
                struct conn c = {0};
                int open_rc = -1;
                for (int m = 0; m < 2 && !bench_stop; m++) {
                    if (!o->modes[m])
                        continue;
                    char sz[32];
                    double el = (double)(now_ns() - t0) / 1e9;
                    double eta = done ? el / done * (total - done) : 0;
                    if (tty) /* elsewhere one line per finished row is enough */
                        progress("[%u/%u %4.0fs, eta %4.0fs] %-14s %-10s %8s x %3u ...", done + 1,
                                 total, el, eta, tn, mode_name[m],
                                 size_text(o->sizes[si], sz, sizeof(sz)), o->concs[ci]);
                    if (open_rc < 0 &&
                        (open_rc = conn_open(o, sv, t, o->sizes[si], o->concs[ci], &c)) < 0) {
                        struct row_result r = {.transport = tn,
                                               .mode = (enum bench_mode)m,
                                               .size = o->sizes[si],
                                               .conc = o->concs[ci],
                                               .errors = 1,
                                               .cpu_server_us = -1};
                        keep_result(&r); /* shown as ERRORS */
                        if (json != NULL)
                            json_row(json, &r, o);
                        errors++;
                        done++;
                        continue;
                    }
                    struct row_params p = {.mode = (enum bench_mode)m,
                                           .size = o->sizes[si],
                                           .conc = o->concs[ci],
                                           .warm_ms = o->warm_ms,
                                           .ms = o->ms,
                                           .server_pid =
                                               t == T_SHMIPCD_PROC ? sv->proc_pid : sv->pid[t]};
                    struct row_result r;
                    int rc = c.shm ? shm_row(c.shm, &p, &r) : sock_row(c.sock, &p, &r);
                    r.transport = tn;
                    done++;
                    if (bench_stop && r.ops == 0)
                        break;
                    if (rc < 0)
                        errors++;
                    if (rc < 0 || r.fallbacks > 0) {
                        /* A broken stream or connection, or shmipc streams that fell back
                         * to the socket for good (and sessions marked unhealthy): the
                         * next row starts afresh. */
                        conn_close(&c);
                        open_rc = -1;
                    }
                    keep_result(&r);
                    if (json != NULL)
                        json_row(json, &r, o);
                    progress("[%u/%u %4.0fs] %-14s %-10s %8s x %3u: %10.0f ns/op%s", done, total,
                             (double)(now_ns() - t0) / 1e9, tn, mode_name[m],
                             size_text(o->sizes[si], sz, sizeof(sz)), o->concs[ci], r.ns_per_op,
                             rc < 0 ? " ERRORS" : "");
                }
                conn_close(&c);
            }
        }
    }
    progress_done();
    fprintf(stderr, "shmipc-bench: %u rows in %.1f s%s\n", done, (double)(now_ns() - t0) / 1e9,
            bench_stop ? " (interrupted)" : "");
    return errors ? -1 : 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    if (parse_opts(argc, argv, &o) < 0)
        return 2;
    if (o.max_slice)
        shm_set_max_slice((uint32_t)o.max_slice);
    log_set_level(LOG_WARN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/shmipc-bench-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("shmipc-bench: mkdtemp");
        return 1;
    }
    atexit(cleanup_at_exit);
    FILE *json = NULL;
    if (o.json != NULL && (json = fopen(o.json, "w")) == NULL) {
        fprintf(stderr, "shmipc-bench: %s: %s\n", o.json, strerror(errno));
        return 1;
    }
    struct servers sv;
    memset(&sv, 0, sizeof(sv));
    unsigned long long nofile0 = 0, nofile1 = 0;
    if (o.clients && sock_raise_nofile(&nofile0, &nofile1) == 0 && nofile1 != nofile0)
        fprintf(stderr, "shmipc-bench: open files limit raised from %llu to %llu (shmipcd "
                "inherits it)\n", nofile0, nofile1);
    int rc = start_servers(&o, &sv);
    if (o.clients) {
        struct scale_opts so = {.address = sv.addr_shmipcd,
                                .uds_path = o.scale_uds ? sv.uds.path : NULL,
                                .server_pid = sv.pid[o.scale_uds ? T_UDS : T_SHMIPCD],
                                .clients = o.clients,
                                .pool_bytes = o.pool_bytes,
                                .size = o.sizes[0],
                                .ms = o.ms,
                                .trials = o.trials};
        struct scale_summary sum = {.clients = o.clients, .failed = 1};
        if (rc == 0)
            rc = scale_run(&so, &sum);
        int src = stop_servers(&o, &sv);
        if (json != NULL)
            fclose(json);
        scale_print_summary(&sum); /* the last line */
        return bench_stop ? 130 : rc < 0 || src < 0 ? 1 : 0;
    }
    if (rc == 0)
        rc = run_rows(&o, &sv, json);
    int src = stop_servers(&o, &sv);
    if (json != NULL)
        fclose(json);
    print_table(stdout, &o);
    if (o.table != NULL) {
        FILE *f = fopen(o.table, "w");
        if (f == NULL) {
            fprintf(stderr, "shmipc-bench: %s: %s\n", o.table, strerror(errno));
            rc = -1;
        } else {
            print_table(f, &o);
            fclose(f);
        }
    }
    if (o.plot != NULL && nresults > 0 && plot(&o) < 0)
        rc = -1;
    free(results);
    if (bench_stop)
        return 130;
    return rc < 0 || src < 0 ? 1 : 0;
}

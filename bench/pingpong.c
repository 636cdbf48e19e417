/*
 * shmipc-pingpong: request/response round trips of one size over shmipc
 * (library client against the library server, in another process) and
 * over a plain unix socket (an epoll echo server with 4-byte length
 * framing), measured in the same run. Each of C client threads keeps one
 * request in flight on its own stream or connection; every request byte
 * is written and every response byte read and checked on both transports.
 *
 * Usage: shmipc-pingpong [--sizes 64,1048576] [--streams 1,8] [--ms 1500]
 *                        [--mode memfd|file] [--connect ADDR] [--no-uds]
 *                        [--spin-us N]   (low-latency mode on client and server;
 *                                         --server-spin-us N: the server's alone)
 *                        [--sessions N] [--pool-mb N] [--server-pid PID]
 *                        [--adaptive-spin 0|1] [--server-spin-us N]
 *                        [--write copy|reserve] [--floor]
 * --write reserve makes the shmipc client write each request where it is
 * sent, into shared memory (shmipc_stream_reserve, 64 KiB at a time,
 * the pattern copied straight there; timed from the first reserve), as a
 * program that builds its messages in place would; copy (the default)
 * writes a private buffer first and hands it to shmipc_call(), as the
 * unix-socket client hands its buffer to write().
 * The shmipc client has one session (the library's default; --sessions
 * N for more) and a 64 MiB pool (--pool-mb); its calls are blocking
 * shmipc_call()s, answers checked where they lie.
 * --connect points the shmipc client at a running echo server (shmipcd's
 * echo plugin, echo_server, or any peer speaking the protocol) instead of
 * one forked here; --no-uds skips the unix-socket rows.
 * Prints one line per transport, size and stream count: round trips,
 * ns/op (wall time / round trips), p50 and p99 round-trip latency, CPU per
 * round trip of the client process and of the server process (all their
 * threads; "-" when unknown), and for shmipc the Polling events the client
 * sent per message; then uds/shmipc, the ratio of the two ns/op.
 * --floor adds a row of the same calls reduced to their bones (floor.h:
 * callers and a server process that wake each other by futex alone, the
 * answer the request's own bytes): what no blocking call between two
 * processes can beat on this machine; the ratio line then shows uds/floor
 * and shmipc/floor too.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "floor.h"
#include "shmipc/shmipc.h"

#define MAX_LIST 16

struct opts {
    size_t sizes[MAX_LIST];
    unsigned nsizes;
    unsigned streams[MAX_LIST];
    unsigned nstreams;
    int ms;
    enum shmipc_mem_mode mode;
    const char *connect;
    int no_uds;
    int spin_us;
    int server_spin_us; /* -1: as spin_us */
    unsigned sessions; /* client sessions (the library's default: 1) */
    size_t pool_mb;
    pid_t server_pid;  /* --connect: whose CPU to count as the server's */
    int adaptive_spin; /* -1: the library's default */
    int reserve;       /* --write reserve */
    int floor;         /* --floor: the machine's floor row too (floor.h) */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t self_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU time of a process, summed over its threads (schedstat, ns); 0 when
 * unknown. Threads that ended are not counted: the servers here keep
 * theirs for the whole run. */
static uint64_t proc_cpu_ns(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
    DIR *d = pid > 0 ? opendir(path) : NULL;
    if (d == NULL)
        return 0;
    uint64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[300];
        snprintf(p, sizeof(p), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
        FILE *f = fopen(p, "re");
        unsigned long long run = 0;
        if (f != NULL) {
            if (fscanf(f, "%llu", &run) != 1)
                run = 0;
            fclose(f);
        }
        sum += run;
    }
    closedir(d);
    return sum;
}

/* CPU time all processes spent since boot (/proc/stat user+nice+system), ns:
 * what others used during a row shows how noisy it was. */
static uint64_t system_busy_ns(void)
{
    FILE *f = fopen("/proc/stat", "re");
    unsigned long long user = 0, nice = 0, sys = 0;
    if (f != NULL) {
        if (fscanf(f, "cpu %llu %llu %llu", &user, &nice, &sys) != 3)
            user = nice = sys = 0;
        fclose(f);
    }
    return (uint64_t)(user + nice + sys) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* ---- servers (run in a forked child) ---- */

static shmipc_server *echo_srv;

static void stop_echo(int sig)
{
    (void)sig;
    shmipc_server_stop(echo_srv);
}

/* The echo sends the request's own slices back (shmipc_stream_forward):
 * the server neither copies nor reads the payload, as a zero-copy server
 * would; the client still writes and checks every byte. */
static void echo_message(shmipc_stream *st, shmipc_msg *m, void *arg)
{
    (void)arg;
    if (shmipc_stream_forward(st, m) < 0)
        shmipc_stream_discard(st);
}

static int run_shmipc_server(const char *addr, int spin_us)
{
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    cfg.address = addr;
    cfg.spin_us = spin_us;
    struct shmipc_server_handlers h = {.on_message = echo_message};
    if (shmipc_server_open(&cfg, &h, NULL, &echo_srv) < 0)
        return 1;
    struct sigaction sa = {.sa_handler = stop_echo};
    sigaction(SIGTERM, &sa, NULL);
    int rc = shmipc_server_run(echo_srv);
    shmipc_server_close(echo_srv);
    return rc < 0;
}

struct uds_conn {
    int fd;
    uint8_t *buf;
    size_t have, need, cap;
};

/* Reads what is there; when a whole frame is in, writes it back. */
static int uds_serve(struct uds_conn *c)
{
    for (;;) {
        size_t want = c->need ? c->need : 4;
        if (c->have == want && c->need == 0) {
            uint32_t len;
            memcpy(&len, c->buf, 4);
            c->need = 4 + (size_t)len;
            if (c->need > c->cap) {
                c->cap = c->need;
                c->buf = realloc(c->buf, c->cap);
            }
            continue;
        }
        if (c->need && c->have == c->need) {
            size_t off = 0;
            while (off < c->need) {
                ssize_t w = write(c->fd, c->buf + off, c->need - off);
                if (w > 0) {
                    off += (size_t)w;
                } else if (w < 0 && errno == EAGAIN) {
                    struct timespec ts = {0, 20000};
                    nanosleep(&ts, NULL);
                } else {
                    return -1;
                }
            }
            c->have = c->need = 0;
            continue;
        }
        ssize_t n = read(c->fd, c->buf + c->have, want - c->have);
        if (n > 0) {
            c->have += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return 0;
        return -1;
    }
}

static volatile sig_atomic_t uds_stop;

static void stop_uds(int sig)
{
    (void)sig;
    uds_stop = 1;
}

static int run_uds_server(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(a.sun_path))
        return 1;
    memcpy(a.sun_path, path, strlen(path) + 1);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    unlink(path);
    if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 256) < 0)
        return 1;
    struct sigaction sa = {.sa_handler = stop_uds};
    sigaction(SIGTERM, &sa, NULL);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    while (!uds_stop) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 200);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct uds_conn *c = calloc(1, sizeof(*c));
                    c->fd = fd;
                    c->cap = 4096;
                    c->buf = malloc(c->cap);
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            struct uds_conn *c = evs[i].data.ptr;
            if (uds_serve(c) < 0) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c->buf);
                free(c);
            }
        }
    }
    unlink(path);
    return 0;
}

/* ---- clients ---- */

struct worker {
    pthread_t th;
    int uds;                /* 1: unix socket, 0: shmipc */
    shmipc_client *client;
    const char *path;
    size_t size;
    uint64_t end_ns;
    int reserve;            /* shmipc: write in place (--write reserve) */
    uint64_t ops, errors;
    uint32_t *lat_us;       /* per round trip */
    size_t nlat, caplat;
};

static void record(struct worker *w, uint64_t t0)
{
    if (w->nlat == w->caplat) {
        w->caplat = w->caplat ? w->caplat * 2 : 4096;
        w->lat_us = realloc(w->lat_us, w->caplat * sizeof(*w->lat_us));
    }
    w->lat_us[w->nlat++] = (uint32_t)((now_ns() - t0 + 500) / 1000);
    w->ops++;
}

/* The payload: byte i of the message with `seed` is (uint8_t)(seed + i),
 * copied from this table (pattern[k] = k % 256) so that neither transport
 * pays a byte loop for it. */
static uint8_t *pattern;

static void fill(uint8_t *dst, size_t n, uint8_t seed)
{
    memcpy(dst, pattern + seed, n);
}

/* Checks the piece [off, off + n) of a message: every 61st byte of the
 * message and its last one (n_total), where they fall in the piece. */
static int check_piece(const uint8_t *p, size_t off, size_t n, size_t n_total, uint8_t seed)
{
    for (size_t i = (off + 60) / 61 * 61; i < off + n; i += 61)
        if (p[i - off] != (uint8_t)(seed + i))
            return 0;
    if (n_total > 0 && off + n == n_total && p[n - 1] != (uint8_t)(seed + n_total - 1))
        return 0;
    return 1;
}

static int check(const uint8_t *p, size_t n, uint8_t seed)
{
    return check_piece(p, 0, n, n, seed);
}

/* A response checked where it lies, piece by piece. */
static int check_msg(const shmipc_msg *m, size_t n, uint8_t seed)
{
    if (m->len != n)
        return 0;
    size_t off = 0;
    for (unsigned i = 0; i < m->niov; i++) {
        if (!check_piece(m->iov[i].base, off, m->iov[i].len, n, seed))
            return 0;
        off += m->iov[i].len;
    }
    return off == n;
}

#define RESERVE_CHUNK 65536
static int write_reserve; /* --write reserve */

static void *shmipc_worker(void *arg)
{
    struct worker *w = arg;
    shmipc_stream *st;
    if (shmipc_client_get(w->client, &st) < 0) {
        w->errors++;
        return NULL;
    }
    uint8_t *req = malloc(w->size + 1);
    for (uint8_t seed = 0; now_ns() < w->end_ns; seed++) {
        uint64_t t0 = now_ns();
        int rc = 0;
        if (w->reserve) {
            /* The request written where it goes: nothing copied after. */
            for (size_t off = 0; off < w->size && rc == 0;) {
                size_t k = w->size - off < RESERVE_CHUNK ? w->size - off : RESERVE_CHUNK;
                void *p;
                if ((rc = shmipc_stream_reserve(st, k, &p)) == 0)
                    memcpy(p, pattern + seed + off, k);
                off += k;
            }
        } else {
            fill(req, w->size, seed);
            t0 = now_ns();
        }
        shmipc_msg m;
        if (rc == 0)
            rc = shmipc_call(st, req, w->reserve ? 0 : w->size, &m, 5000);
        if (rc < 0) {
            w->errors++;
            break;
        }
        /* Read in place: the response lies in shared memory. */
        if (!check_msg(&m, w->size, seed))
            w->errors++;
        shmipc_msg_release(&m);
        record(w, t0);
    }
    free(req);
    shmipc_client_put(w->client, st);
    return NULL;
}

static int read_full(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void *uds_worker(void *arg)
{
    struct worker *w = arg;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    memcpy(a.sun_path, w->path, strlen(w->path) + 1); /* checked by the server side */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        w->errors++;
        close(fd);
        return NULL;
    }
    uint8_t *req = malloc(w->size + 4), *resp = malloc(w->size + 4);
    uint32_t len = (uint32_t)w->size;
    for (uint8_t seed = 0; now_ns() < w->end_ns; seed++) {
        memcpy(req, &len, 4);
        fill(req + 4, w->size, seed);
        uint64_t t0 = now_ns();
        if (write_full(fd, req, w->size + 4) < 0 || read_full(fd, resp, w->size + 4) < 0) {
            w->errors++;
            break;
        }
        if (!check(resp + 4, w->size, seed))
            w->errors++;
        record(w, t0);
    }
    free(req);
    free(resp);
    close(fd);
    return NULL;
}

/* The floor row (floor.h): the bare blocking echo, same size and callers. */
static double floor_row(size_t size, unsigned nstreams, int ms)
{
    struct floor_result r;
    int rc = floor_echo(size, nstreams, ms, &r);
    if (rc < 0) {
        fprintf(stderr, "shmipc-pingpong: the floor row failed: %s\n", strerror(-rc));
        return 0.0;
    }
    printf("floor    size %8zu  streams %3u  round trips %8lu  ns/op %10.0f  p50 %6u us  p99 %6u us"
           "  cpu/op us cli %6.2f srv %6.2f  errors %lu\n",
           size, nstreams, (unsigned long)r.ops, r.ns_per_op, r.p50_us, r.p99_us, r.cpu_cli_us,
           r.cpu_srv_us, (unsigned long)r.errors);
    fflush(stdout);
    return r.ns_per_op;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* One row: returns its ns/op. */
static double run_case(const char *name, int uds, shmipc_client *client, const char *path,
                       size_t size, unsigned nstreams, int ms, pid_t server)
{
    struct worker *w = calloc(nstreams, sizeof(*w));
    struct shmipc_stats st0 = {0}, st1 = {0};
    if (client != NULL)
        shmipc_client_stats(client, &st0);
    uint64_t cpu0 = self_cpu_ns(), srv0 = proc_cpu_ns(server), all0 = system_busy_ns();
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)ms * 1000000u;
    for (unsigned i = 0; i < nstreams; i++) {
        w[i] = (struct worker){.uds = uds, .client = client, .path = path, .size = size,
                               .end_ns = end, .reserve = !uds && write_reserve};
        pthread_create(&w[i].th, NULL, uds ? uds_worker : shmipc_worker, &w[i]);
    }
    uint64_t ops = 0, errors = 0;
    size_t nlat = 0;
    for (unsigned i = 0; i < nstreams; i++) {
        pthread_join(w[i].th, NULL);
        ops += w[i].ops;
        errors += w[i].errors;
        nlat += w[i].nlat;
    }
    uint64_t wall = now_ns() - t0;
    uint64_t cpu = self_cpu_ns() - cpu0, srv1 = proc_cpu_ns(server), all1 = system_busy_ns();
    double other = (double)(all1 - all0) - (double)cpu - (double)(srv1 - srv0);
    other = other > 0 ? other * 100.0 / (double)wall : 0.0;
    if (client != NULL)
        shmipc_client_stats(client, &st1);
    uint32_t *all = malloc((nlat ? nlat : 1) * sizeof(*all));
    size_t k = 0;
    for (unsigned i = 0; i < nstreams; i++) {
        memcpy(all + k, w[i].lat_us, w[i].nlat * sizeof(*all));
        k += w[i].nlat;
        free(w[i].lat_us);
    }
    qsort(all, nlat, sizeof(*all), cmp_u32);
    double nsop = ops ? (double)wall / (double)ops : 0.0;
    char srvtxt[32] = "     -", poltxt[64] = "";
    if (server > 0 && srv0 > 0 && srv1 >= srv0 && ops)
        snprintf(srvtxt, sizeof(srvtxt), "%6.2f", (double)(srv1 - srv0) / 1000.0 / (double)ops);
    if (client != NULL) {
        uint64_t msgs = st1.messages_sent - st0.messages_sent;
        uint64_t fb = st1.fallbacks_sent + st1.fallbacks_received - st0.fallbacks_sent -
                      st0.fallbacks_received;
        snprintf(poltxt, sizeof(poltxt), "  polling/msg out %.3f in %.3f%s",
                 msgs ? (double)(st1.wakeups_sent - st0.wakeups_sent) / (double)msgs : 0.0,
                 msgs ? (double)(st1.wakeups_received - st0.wakeups_received) / (double)msgs : 0.0,
                 fb ? "  FALLBACKS" : "");
    }
    printf("%-8s size %8zu  streams %3u  round trips %8lu  ns/op %10.0f  p50 %6u us  p99 %6u us"
           "  cpu/op us cli %6.2f srv %s%s  other %3.0f%%  errors %lu\n",
           name, size, nstreams, (unsigned long)ops, nsop, nlat ? all[nlat / 2] : 0,
           nlat ? all[nlat * 99 / 100] : 0, ops ? (double)cpu / 1000.0 / (double)ops : 0.0, srvtxt,
           poltxt, other, (unsigned long)errors);
    fflush(stdout);
    free(all);
    free(w);
    return errors ? 0.0 : nsop;
}

static unsigned parse_list(const char *s, size_t *out)
{
    unsigned n = 0;
    char *copy = strdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t && n < MAX_LIST; t = strtok_r(NULL, ",", &save))
        out[n++] = (size_t)strtoull(t, NULL, 10);
    free(copy);
    return n;
}

int main(int argc, char **argv)
{
    struct opts o = {.sizes = {64, 1048576}, .nsizes = 2, .streams = {1, 8}, .nstreams = 2,
                     .ms = 1500, .mode = SHMIPC_MODE_MEMFD, .pool_mb = 64, .sessions = 1,
                     .adaptive_spin = -1, .server_spin_us = -1};
    for (int i = 1; i < argc; i += 2) {
        size_t tmp[MAX_LIST];
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: shmipc-pingpong [--sizes 64,1048576] [--streams 1,8] [--ms 1500]\n"
                   "                       [--mode memfd|file] [--spin-us N] [--connect ADDR]\n"
                   "                       [--no-uds] [--sessions N] [--pool-mb N]\n"
                   "                       [--server-pid PID] [--adaptive-spin 0|1]\n"
                   "                       [--server-spin-us N] [--write copy|reserve]\n"
                   "                       [--floor]\n"
                   "One ping-pong per size and stream count: shmipc (a library server\n"
                   "forked here, or ADDR) and a unix-socket baseline (unless --no-uds);\n"
                   "every byte written and checked. --floor adds the machine's floor:\n"
                   "the same calls as bare futex wake-ups between two processes.\n");
            return 0;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("shmipc-pingpong (shmipc) %s\n", SHMIPC_VERSION);
            return 0;
        }
        if (strcmp(argv[i], "--no-uds") == 0) {
            o.no_uds = 1;
            i--;
            continue;
        }
        if (strcmp(argv[i], "--floor") == 0) {
            o.floor = 1;
            i--;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "option %s needs a value\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--spin-us") == 0) {
            o.spin_us = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--server-spin-us") == 0) {
            o.server_spin_us = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--sessions") == 0) {
            o.sessions = (unsigned)atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--pool-mb") == 0) {
            o.pool_mb = (size_t)atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--server-pid") == 0) {
            o.server_pid = (pid_t)atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--adaptive-spin") == 0) {
            o.adaptive_spin = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--write") == 0) {
            o.reserve = strcmp(argv[i + 1], "reserve") == 0;
            if (!o.reserve && strcmp(argv[i + 1], "copy") != 0) {
                fprintf(stderr, "--write: copy or reserve\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--connect") == 0) {
            o.connect = argv[i + 1];
        } else if (strcmp(argv[i], "--sizes") == 0) {
            o.nsizes = parse_list(argv[i + 1], o.sizes);
        } else if (strcmp(argv[i], "--streams") == 0) {
            o.nstreams = parse_list(argv[i + 1], tmp);
            for (unsigned k = 0; k < o.nstreams; k++)
                o.streams[k] = (unsigned)tmp[k];
        } else if (strcmp(argv[i], "--ms") == 0) {
            o.ms = atoi(argv[i + 1]);
        } else if (strcmp(argv[i], "--mode") == 0) {
            o.mode = strcmp(argv[i + 1], "file") == 0 ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
        } else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    write_reserve = o.reserve;
    size_t max_size = 0;
    for (unsigned k = 0; k < o.nsizes; k++)
        if (o.sizes[k] > max_size)
            max_size = o.sizes[k];
    pattern = malloc(max_size + 256);
    if (pattern == NULL)
        return 1;
    for (size_t i = 0; i < max_size + 256; i++)
        pattern[i] = (uint8_t)i;
    char dir[] = "/tmp/shmipc-pingpong-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 1;
    char shm_path[128], uds_path[128], shm_addr[140];
    snprintf(shm_path, sizeof(shm_path), "%s/shmipc.sock", dir);
    snprintf(uds_path, sizeof(uds_path), "%s/uds.sock", dir);
    snprintf(shm_addr, sizeof(shm_addr), "unix:%s", shm_path);
    pid_t ps = -1, pu = -1;
    if (o.connect == NULL && (ps = fork()) == 0)
        _exit(run_shmipc_server(shm_addr, o.server_spin_us >= 0 ? o.server_spin_us : o.spin_us));
    if (!o.no_uds && (pu = fork()) == 0)
        _exit(run_uds_server(uds_path));
    /* Wait (bounded) for the servers started here to listen. */
    for (int i = 0; i < 200 && ((ps > 0 && access(shm_path, F_OK) != 0) ||
                                (pu > 0 && access(uds_path, F_OK) != 0));
         i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = o.connect ? o.connect : shm_addr;
    cfg.mode = o.mode;
    cfg.sessions = o.sessions;
    cfg.pool_bytes = o.pool_mb << 20;
    cfg.spin_us = o.spin_us;
    if (o.adaptive_spin >= 0)
        cfg.adaptive_spin = o.adaptive_spin;
    shmipc_client *client = NULL;
    int rc = shmipc_client_open(&cfg, &client);
    if (rc < 0) {
        fprintf(stderr, "shmipc-pingpong: %s\n", shmipc_strerror(rc));
    } else {
        pid_t srv = o.connect ? o.server_pid : ps;
        for (unsigned si = 0; si < o.nsizes; si++) {
            for (unsigned k = 0; k < o.nstreams; k++) {
                double a = run_case("shmipc", 0, client, NULL, o.sizes[si], o.streams[k], o.ms,
                                    srv);
                double f = o.floor ? floor_row(o.sizes[si], o.streams[k], o.ms) : 0.0;
                if (o.no_uds)
                    continue;
                double b = run_case("uds", 1, NULL, uds_path, o.sizes[si], o.streams[k], o.ms, pu);
                if (a > 0 && b > 0)
                    printf("ratio    size %8zu  streams %3u  uds/shmipc %.2f", o.sizes[si],
                           o.streams[k], b / a);
                if (a > 0 && b > 0 && f > 0)
                    printf("  uds/floor %.2f  shmipc/floor %.2f", b / f, a / f);
                if (a > 0 && b > 0)
                    printf("\n");
            }
        }
        struct shmipc_stats st;
        shmipc_client_stats(client, &st);
        printf("shmipc client: %lu messages sent, %lu Polling sent (%.3f per message), "
               "%lu received, %lu fallbacks\n",
               (unsigned long)st.messages_sent, (unsigned long)st.wakeups_sent,
               st.messages_sent ? (double)st.wakeups_sent / (double)st.messages_sent : 0.0,
               (unsigned long)st.wakeups_received, (unsigned long)st.fallbacks_sent);
        shmipc_client_close(client);
    }
    if (ps > 0) {
        kill(ps, SIGTERM);
        waitpid(ps, NULL, 0);
    }
    if (pu > 0) {
        kill(pu, SIGTERM);
        waitpid(pu, NULL, 0);
    }
    rmdir(dir);
    free(pattern);
    return rc < 0;
}

/*
 * The session suite's fixture (tests/unit/test_session.c): the forked C
 * server child and the client-side helpers. What each offers, and who owns
 * what, is in session_fixture.h.
 */
#include "session_fixture.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- checks that can stop a test (at its `out:` label) ---- */

int sfx_expect_rc(int got, int want, const char *what, const char *file, unsigned line)
{
    int ok = got == want;
    if (!ok)
        fprintf(stderr, "\n  %s:%u: %s is %d (%s), expected %d (%s)\n", file, line, what, got,
                shmipc_err_name(got), want, shmipc_err_name(want));
    CU_assertImplementation(ok ? CU_TRUE : CU_FALSE, line, what, file, "", CU_FALSE);
    return ok;
}

void sfx_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* The tu_now_ns() time `ms` from now: a bounded wait's end. */
uint64_t sfx_deadline_ns(int ms)
{
    return tu_now_ns() + (uint64_t)ms * 1000000u;
}

/* ---- payloads ---- */

/* Byte i of the message with this seed: every message is distinct and a
 * byte out of place shows. */
uint8_t sfx_pat(uint64_t seed, uint64_t i)
{
    uint64_t x = (seed ^ 0x9e3779b97f4a7c15ull) + i * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 29;
    return (uint8_t)x;
}

void sfx_fill(uint8_t *b, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = sfx_pat(seed, i);
}

uint8_t *sfx_pattern(size_t n, uint64_t seed)
{
    uint8_t *b = malloc(n ? n : 1);
    if (b != NULL)
        sfx_fill(b, n, seed);
    return b;
}

uint64_t sfx_fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t sfx_msg_hash(const shmipc_msg *m)
{
    uint64_t h = FNV_INIT;
    for (unsigned i = 0; i < m->niov; i++)
        h = sfx_fnv1a(h, m->iov[i].base, m->iov[i].len);
    return h;
}

/* 1 if the message is exactly the n pattern bytes of `seed`. */
int sfx_msg_is(const shmipc_msg *m, size_t n, uint64_t seed)
{
    if (m->len != n) {
        fprintf(stderr, "\n  message of %zu bytes, expected %zu\n", m->len, n);
        return 0;
    }
    size_t at = 0;
    for (unsigned i = 0; i < m->niov; i++) {
        for (size_t k = 0; k < m->iov[i].len; k++, at++) {
            if (m->iov[i].base[k] != sfx_pat(seed, at)) {
                fprintf(stderr, "\n  message byte %zu differs (seed %llu)\n", at,
                        (unsigned long long)seed);
                return 0;
            }
        }
    }
    return at == n;
}

uint64_t sfx_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ---- leftovers ---- */

/* The /dev/shm name prefix of this run, with the test process's pid (set
 * before any fork, so children share it): another run of the suite at the
 * same time must not change our counts. `suffix` ("", "a", "b") tells
 * apart several clients; the library adds "_<pid>..." after it. */
const char *sfx_shm_name(const char *suffix)
{
    static int pid;
    static char buf[4][64];
    static unsigned next;
    if (pid == 0)
        pid = (int)getpid();
    char *b = buf[next++ % 4];
    snprintf(b, sizeof(buf[0]), "shmipc-sesstest-%d-%s", pid, suffix); /* '-': 12 vs 123 */
    return b;
}

/* The client's path_prefix for that name: one string per suffix, kept
 * for the run (the suite uses four suffixes). */
const char *sfx_shm_prefix(const char *suffix)
{
    static struct {
        char suffix[8];
        char path[96];
    } cache[8];
    unsigned i = 0;
    while (i < 7 && cache[i].path[0] != '\0' && strcmp(cache[i].suffix, suffix) != 0)
        i++;
    if (cache[i].path[0] == '\0' || strcmp(cache[i].suffix, suffix) != 0) {
        snprintf(cache[i].suffix, sizeof(cache[i].suffix), "%s", suffix);
        snprintf(cache[i].path, sizeof(cache[i].path), "/dev/shm/%s", sfx_shm_name(suffix));
    }
    return cache[i].path;
}

void sfx_leaks_begin(struct leaks *l)
{
    l->fds = tu_count_fds();
    l->maps = tu_count_maps();
    l->shm = tu_count_shm(sfx_shm_name(""));
}

void sfx_leaks_check(const struct leaks *l)
{
    int fds = tu_count_fds(), maps = tu_count_maps(), shm = tu_count_shm(sfx_shm_name(""));
    if (fds != l->fds || maps != l->maps || shm != l->shm)
        fprintf(stderr, "\n  leftovers: fds %d -> %d, shared maps %d -> %d, /dev/shm %d -> %d\n",
                l->fds, fds, l->maps, maps, l->shm, shm);
    CU_ASSERT_EQUAL(fds, l->fds);
    CU_ASSERT_EQUAL(maps, l->maps);
    CU_ASSERT_EQUAL(shm, l->shm);
}

/* Removes /dev/shm files a killed client process left (its pid in the name). */
int sfx_unlink_shm_of(pid_t pid)
{
    char want[64];
    snprintf(want, sizeof(want), "%s_%d_", sfx_shm_name(""), (int)pid);
    DIR *d = opendir("/dev/shm");
    int n = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, want, strlen(want)) != 0)
            continue;
        char path[512];
        snprintf(path, sizeof(path), "/dev/shm/%s", e->d_name);
        n += unlink(path) == 0;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

/* A forked child starts with only stdio and `keep`/`keep2`: it must not
 * hold the parent's sockets or memfds (a server child outliving a client
 * would keep that client's resources alive). */
void sfx_close_inherited(int keep, int keep2)
{
    int fds[256], n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL && n < 256) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd > 2 && fd != keep && fd != keep2 && fd != dirfd(d))
            fds[n++] = fd;
    }
    if (d != NULL)
        closedir(d);
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static int count_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    int n = 0;
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    if (d != NULL)
        closedir(d);
    return n;
}

/* ASan builds check the child for leaks too; release builds lack the symbol. */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

/* ---- the server child ---- */

static const char ctl_stats[CTL_LEN + 1] = "\001ctl:stats\001";
static const char ctl_closed[CTL_LEN + 1] = "\001ctl:close\001";
/* Documented in the header. */
const char sfx_ctl_gate[CTL_LEN + 1] = "\001ctl:gate_\001";

struct tally {
    uint32_t msgs;
    uint64_t bytes;
};

struct srv_state {
    shmipc_server *srv;
    enum srv_mode mode;
    const char *address;
    uint32_t nclosed; /* ever; the log keeps the last CLOSED_MAX */
    struct closed_rec closed[CLOSED_MAX];
};

static shmipc_server *child_srv; /* for the SIGTERM handler */

static void child_on_term(int sig)
{
    (void)sig;
    shmipc_server_stop(child_srv);
}

static void reply(shmipc_stream *st, const void *p, size_t n)
{
    int rc = shmipc_stream_write(st, p, n);
    if (rc == 0)
        rc = shmipc_stream_flush(st);
    (void)rc; /* a full queue is retried by the server; else the session is gone */
}

static void h_stream(shmipc_stream *st, void *arg)
{
    (void)arg;
    shmipc_stream_set_user(st, calloc(1, sizeof(struct tally)));
}

static int ctl_kind(const shmipc_msg *m)
{
    char b[CTL_LEN];
    if (m->len != CTL_LEN || shmipc_msg_copy(m, 0, b, CTL_LEN) != CTL_LEN)
        return 0;
    if (memcmp(b, sfx_ctl_gate, CTL_LEN) == 0)
        return 3;
    return memcmp(b, ctl_stats, CTL_LEN) == 0 ? 1 : memcmp(b, ctl_closed, CTL_LEN) == 0 ? 2 : 0;
}

/* The socket's directory, from unix:<dir>/sock. */
static void gate_path(const struct srv_state *S, const char *name, char *out, size_t cap)
{
    const char *a = strncmp(S->address, "unix:", 5) == 0 ? S->address + 5 : S->address;
    const char *slash = strrchr(a, '/');
    int dirlen = slash != NULL ? (int)(slash - a) : 0;
    snprintf(out, cap, "%.*s/%s", dirlen, a, name);
}

static void pass_gate(const struct srv_state *S)
{
    char path[256], c = 'E';
    gate_path(S, "entered", path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, &c, 1) != 1)
            c = 0;
        close(fd);
    }
    gate_path(S, "release", path, sizeof(path));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &c, 1) != 1)
            c = 0;
        close(fd);
    }
}

static void answer_ctl(struct srv_state *S, shmipc_stream *st, int kind)
{
    if (kind == 1) {
        struct shmipc_stats s;
        shmipc_server_stats(S->srv, &s);
        reply(st, &s, sizeof(s));
        return;
    }
    uint32_t n = S->nclosed < CLOSED_MAX ? S->nclosed : CLOSED_MAX;
    uint8_t buf[4 + sizeof(S->closed)];
    memcpy(buf, &n, 4);
    memcpy(buf + 4, S->closed, n * sizeof(S->closed[0]));
    reply(st, buf, 4 + n * sizeof(S->closed[0]));
}

static void log_closed(struct srv_state *S, shmipc_stream *st)
{
    struct tally *t = shmipc_stream_user(st);
    struct closed_rec r = {shmipc_stream_id(st), t ? t->msgs : 0, t ? t->bytes : 0};
    S->closed[S->nclosed++ % CLOSED_MAX] = r;
    free(t);
    shmipc_stream_set_user(st, NULL);
}

static void h_message(shmipc_stream *st, shmipc_msg *m, void *arg)
{
    struct srv_state *S = arg;
    int kind = ctl_kind(m);
    if (kind == 3) {
        pass_gate(S);
        kind = 0;
    }
    if (kind != 0) {
        shmipc_msg_release(m);
        answer_ctl(S, st, kind);
        return;
    }
    struct tally *t = shmipc_stream_user(st);
    if (t != NULL) {
        t->msgs++;
        t->bytes += m->len;
    }
    if (S->mode == SRV_SWALLOW) {
        shmipc_msg_release(m);
    } else if (S->mode == SRV_HASH) {
        uint8_t out[12];
        uint32_t len = (uint32_t)m->len;
        uint64_t h = sfx_msg_hash(m);
        shmipc_msg_release(m);
        memcpy(out, &len, 4);
        memcpy(out + 4, &h, 8);
        reply(st, out, sizeof(out));
    } else if (S->mode == SRV_FORWARD) {
        if (m->niov > 0 && m->iov[0].len >= 4 && memcmp(m->iov[0].base, "pfx?", 4) == 0)
            shmipc_stream_write(st, "pfx", 3);
        shmipc_stream_forward(st, m);
    } else {
        int rc = 0;
        for (unsigned i = 0; i < m->niov && rc == 0; i++)
            rc = shmipc_stream_write(st, m->iov[i].base, m->iov[i].len);
        shmipc_msg_release(m);
        if (rc == 0)
            shmipc_stream_flush(st);
        if (S->mode == SRV_ECHO_SHUTDOWN) {
            shmipc_stream_shutdown(st);
        } else if (S->mode == SRV_ECHO_CLOSE) {
            log_closed(S, st);       /* no on_close will come */
            shmipc_stream_close(st); /* borrowed: the library keeps its reference */
        }
    }
}

static void h_close(shmipc_stream *st, void *arg)
{
    log_closed(arg, st);
}

struct srv_boot {
    enum srv_mode mode;
    char address[160];
    int go;         /* one byte here starts the server; EOF ends the child */
    int wfd;        /* the server's open result goes here */
    int leak_check; /* at exit (ASan builds) */
};

static int srv_spin_us; /* low-latency mode of the next server child */

static int srv_child_main(void *arg)
{
    struct srv_boot *b = arg;
    sfx_close_inherited(b->wfd, b->go);
    char go;
    if (read(b->go, &go, 1) != 1)
        return 0; /* never started */
    close(b->go);
    struct srv_state S = {.mode = b->mode, .address = b->address};
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    cfg.address = b->address;
    cfg.spin_us = srv_spin_us > 0 ? srv_spin_us : 0;
    if (srv_spin_us < 0)
        cfg.adaptive_spin = 0; /* it never claims a working flag by itself */
    struct shmipc_server_handlers h = {h_stream, h_message, h_close};
    int rc = shmipc_server_open(&cfg, &h, &S, &S.srv);
    if (rc == 0) {
        child_srv = S.srv;
        struct sigaction sa = {.sa_handler = child_on_term};
        sigaction(SIGTERM, &sa, NULL);
    }
    int32_t v = rc;
    if (write(b->wfd, &v, sizeof(v)) != (ssize_t)sizeof(v) || rc < 0)
        return 1;
    close(b->wfd);
    rc = shmipc_server_run(S.srv);
    shmipc_server_close(S.srv);
    if (rc < 0)
        return 2;
    if (b->leak_check && __lsan_do_recoverable_leak_check != NULL &&
        __lsan_do_recoverable_leak_check() != 0)
        return 3; /* the report is on stderr */
    return 0;
}

/* Forks a server child that waits for sfx_srv_go(). 0 or a negative code. */
int sfx_srv_fork(struct srv_child *c, enum srv_mode mode, const char *address)
{
    int go[2], ready[2];
    memset(c, 0, sizeof(*c));
    if (pipe2(go, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(ready, O_CLOEXEC) < 0) {
        int err = -errno;
        close(go[0]);
        close(go[1]);
        return err;
    }
    /* The leak checker looks for every thread the parent had, and they do
     * not exist in the child: check only children of a single thread. */
    struct srv_boot b = {mode, "", go[0], ready[1], count_threads() == 1};
    snprintf(b.address, sizeof(b.address), "%s", address);
    c->pid = tu_fork(srv_child_main, &b);
    close(go[0]);
    close(ready[1]);
    if (c->pid <= 0) {
        close(go[1]);
        close(ready[0]);
        c->pid = 0;
        return -EAGAIN;
    }
    c->waiting = 1;
    c->go = go[1];
    c->ready = ready[0];
    return 0;
}

/* Starts a forked server: 0 once it listens, else its open error or -1
 * (the child is reaped then). */
int sfx_srv_go(struct srv_child *c)
{
    if (!c->waiting)
        return -1;
    int32_t v = -1;
    struct pollfd pfd = {c->ready, POLLIN, 0};
    if (write(c->go, "g", 1) == 1 && poll(&pfd, 1, START_MS) == 1 &&
        read(c->ready, &v, sizeof(v)) != sizeof(v))
        v = -1;
    close(c->go);
    close(c->ready);
    c->waiting = 0;
    if (v != 0) {
        tu_wait(c->pid, CHILD_MS);
        c->pid = 0;
        fprintf(stderr, "\n  server did not start: %s\n", shmipc_strerror(v));
        return v;
    }
    return 0;
}

int sfx_srv_start(struct srv_child *c, enum srv_mode mode, const char *address)
{
    int rc = sfx_srv_fork(c, mode, address);
    return rc < 0 ? rc : sfx_srv_go(c);
}

/* SIGTERM (after SIGCONT, in case a test stopped it) and reap: the exit
 * code, 0 for a clean stop; 0 when no child is running. */
int sfx_srv_stop(struct srv_child *c)
{
    if (c->pid <= 0)
        return 0;
    if (c->waiting) { /* never started: EOF on go ends it */
        close(c->go);
        close(c->ready);
        c->waiting = 0;
    }
    kill(c->pid, SIGCONT);
    kill(c->pid, SIGTERM);
    int rc = tu_wait(c->pid, CHILD_MS);
    c->pid = 0;
    return rc;
}

/* ---- fixture: baseline, socket directory, one server, one client ---- */

int sfx_begin(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    sfx_leaks_begin(&f->base);
    snprintf(f->dir, sizeof(f->dir), "/tmp/shmipc-sess-XXXXXX");
    if (mkdtemp(f->dir) == NULL) {
        f->dir[0] = '\0';
        return -errno;
    }
    snprintf(f->addr, sizeof(f->addr), "unix:%s/sock", f->dir);
    return 0;
}

/* Closes the client, stops the server (which must exit cleanly), removes
 * the directory and checks for leftovers. Safe on a half-built fixture. */
void sfx_end(struct fx *f)
{
    if (f->st != NULL)
        shmipc_stream_close(f->st);
    f->st = NULL;
    shmipc_client_close(f->cli);
    f->cli = NULL;
    EXPECT_RC(sfx_srv_stop(&f->srv), 0);
    if (f->dir[0] != '\0') {
        static const char *const files[] = {"sock", "entered", "release"}; /* + the gate's */
        char path[160];
        for (unsigned i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
            snprintf(path, sizeof(path), "%s/%s", f->dir, files[i]);
            unlink(path);
        }
        CU_ASSERT_EQUAL(rmdir(f->dir), 0);
    }
    sfx_leaks_check(&f->base);
}

void sfx_cfg_init(struct shmipc_client_config *c, const char *addr, enum shmipc_mem_mode mode)
{
    shmipc_client_config_init(c);
    c->address = addr;
    c->mode = mode;
    c->path_prefix = sfx_shm_prefix("");
    c->reconnect_min_ms = 10;
    c->reconnect_max_ms = 100;
}

/* A pool of one size class: a small one lets a test run it out. */
void sfx_one_class_pool(struct shmipc_client_config *c, size_t pool_bytes, uint32_t slice_bytes)
{
    c->pool_bytes = pool_bytes;
    c->nclasses = 1;
    c->classes[0].slice_bytes = slice_bytes;
    c->classes[0].percent = 100;
}

/* The fixture with a server child in `smode` on its socket, in
 * low-latency mode with `spin_us` (0: off, the adaptive spin only; -1:
 * no spin at all, for tests that count Pollings: a server that spins
 * after a turn may set its working flag after the test saw it clear). */
int sfx_serve(struct fx *f, enum srv_mode smode, int spin_us)
{
    int rc = sfx_begin(f);
    if (rc < 0)
        return rc;
    srv_spin_us = spin_us;
    rc = sfx_srv_start(&f->srv, smode, f->addr);
    srv_spin_us = 0;
    return rc;
}

/* Opens the fixture's client with cfg_init's defaults for `mode`; with
 * `st`, takes a stream from it. */
int sfx_connect(struct fx *f, enum shmipc_mem_mode mode, shmipc_stream **st)
{
    struct shmipc_client_config cfg;
    sfx_cfg_init(&cfg, f->addr, mode);
    int rc = shmipc_client_open(&cfg, &f->cli);
    if (rc == 0 && st != NULL)
        rc = shmipc_client_get(f->cli, st);
    return rc;
}

/* The start of most tests: fx_serve, then fx_connect. */
int sfx_start(struct fx *f, enum srv_mode smode, enum shmipc_mem_mode mode, shmipc_stream **st)
{
    int rc = sfx_serve(f, smode, 0);
    return rc < 0 ? rc : sfx_connect(f, mode, st);
}

/* ---- client-side helpers ---- */

/* One message of n pattern bytes and its echo; checks length and content.
 * 0, the library's code, or 1 on a content mismatch. */
int sfx_echo_once(shmipc_stream *st, size_t n, uint64_t seed, unsigned *niov)
{
    uint8_t *buf = sfx_pattern(n, seed);
    if (buf == NULL)
        return -ENOMEM;
    shmipc_msg m;
    int rc = shmipc_call(st, buf, n, &m, RECV_MS);
    free(buf);
    if (rc < 0)
        return rc;
    if (niov != NULL)
        *niov = m.niov;
    rc = sfx_msg_is(&m, n, seed) ? 0 : 1;
    shmipc_msg_release(&m);
    return rc;
}

/* Writes n bytes and flushes them: one message. 0 or the library's code. */
int sfx_send_msg(shmipc_stream *st, const void *p, size_t n)
{
    int rc = shmipc_stream_write(st, p, n);
    return rc < 0 ? rc : shmipc_stream_flush(st);
}

/* The message of sz pattern bytes of `seed`, made in buf, sent. */
int sfx_send_one(shmipc_stream *st, uint8_t *buf, size_t sz, uint64_t seed)
{
    sfx_fill(buf, sz, seed);
    return sfx_send_msg(st, buf, sz);
}

/* Closes the streams still held in st[0..n) and forgets them. */
void sfx_close_streams(shmipc_stream **st, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (st[i] != NULL)
            shmipc_stream_close(st[i]);
        st[i] = NULL;
    }
}

/* A fresh stream, one echo, back to the pool. */
int sfx_echo_new(shmipc_client *c, size_t n, uint64_t seed)
{
    shmipc_stream *st;
    int rc = shmipc_client_get(c, &st);
    if (rc < 0)
        return rc;
    rc = sfx_echo_once(st, n, seed, NULL);
    shmipc_client_put(c, st);
    return rc;
}

/* Reads exactly n bytes with shmipc_stream_read in chunks of varying size
 * and checks them against `want`. 0, a code, or 1 on a mismatch or EOF. */
int sfx_read_expect(shmipc_stream *st, const uint8_t *want, size_t n)
{
    static const size_t chunks[] = {1, 3, 64, 1000, 9999, 65536};
    uint8_t *buf = malloc(65536);
    if (buf == NULL)
        return -ENOMEM;
    size_t got = 0;
    int rc = 0;
    for (unsigned k = 0; got < n && rc == 0; k++) {
        size_t want_now = chunks[k % 6] < n - got ? chunks[k % 6] : n - got;
        int r = shmipc_stream_read(st, buf, want_now, RECV_MS);
        if (r <= 0) {
            fprintf(stderr, "\n  read at byte %zu of %zu: %s\n", got, n,
                    r == 0 ? "end of stream" : shmipc_strerror(r));
            rc = r < 0 ? r : 1;
        } else if ((size_t)r > want_now || memcmp(buf, want + got, (size_t)r) != 0) {
            fprintf(stderr, "\n  read: bytes %zu..%zu differ\n", got, got + (size_t)r);
            rc = 1;
        } else {
            got += (size_t)r;
        }
    }
    free(buf);
    return rc;
}

/* Sends a control message on a stream of its own and copies the answer. */
static int srv_query(shmipc_client *c, const char *ctl, void *out, size_t cap, size_t *len)
{
    shmipc_stream *st;
    int rc = shmipc_client_get(c, &st);
    if (rc < 0)
        return rc;
    shmipc_msg m;
    rc = shmipc_call(st, ctl, CTL_LEN, &m, RECV_MS);
    if (rc == 0) {
        *len = shmipc_msg_copy(&m, 0, out, cap);
        shmipc_msg_release(&m);
    }
    shmipc_stream_close(st);
    return rc;
}

int sfx_srv_stats(shmipc_client *c, struct shmipc_stats *st)
{
    size_t len = 0;
    int rc = srv_query(c, ctl_stats, st, sizeof(*st), &len);
    return rc < 0 ? rc : len == sizeof(*st) ? 0 : 1;
}

/* Finds the records of stream `id` in the server's close log: how many
 * (the first in *out), or a code. Only meaningful with one session. */
int sfx_srv_closed(shmipc_client *c, uint32_t id, struct closed_rec *out)
{
    uint8_t buf[4 + CLOSED_MAX * sizeof(struct closed_rec)];
    size_t len = 0;
    int rc = srv_query(c, ctl_closed, buf, sizeof(buf), &len);
    if (rc < 0)
        return rc;
    uint32_t n;
    if (len < 4)
        return 0;
    memcpy(&n, buf, 4);
    int found = 0;
    for (uint32_t i = 0; i < n && 4 + (i + 1) * sizeof(*out) <= len; i++) {
        struct closed_rec r;
        memcpy(&r, buf + 4 + i * sizeof(r), sizeof(r));
        if (r.id == id && found++ == 0)
            *out = r;
    }
    return found;
}

/* Polls the close log until stream `id` shows up (bounded). */
int sfx_srv_wait_closed(shmipc_client *c, uint32_t id, struct closed_rec *out)
{
    uint64_t end = sfx_deadline_ns(POLL_MS);
    int rc;
    while ((rc = sfx_srv_closed(c, id, out)) == 0 && tu_now_ns() < end)
        sfx_sleep_ms(10);
    return rc;
}

/* ---- ports ---- */

/* A loopback port nobody listens on right now. */
int sfx_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* ---- the gate ---- */

int sfx_gate_init(const struct fx *f, struct gate *g)
{
    snprintf(g->entered, sizeof(g->entered), "%s/entered", f->dir);
    snprintf(g->release, sizeof(g->release), "%s/release", f->dir);
    if (mkfifo(g->entered, 0600) < 0 || mkfifo(g->release, 0600) < 0)
        return -errno;
    return 0;
}

int sfx_gate_entered(const struct gate *g)
{
    /* Our read end open first lets the handler's open for writing return. */
    int fd = open(g->entered, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    char c;
    int rc = poll(&pfd, 1, RECV_MS) == 1 && read(fd, &c, 1) == 1 ? 0 : -ETIMEDOUT;
    close(fd);
    return rc;
}

int sfx_gate_release(const struct gate *g)
{
    /* The handler opens its end right after saying it entered. */
    uint64_t deadline = sfx_deadline_ns(RECV_MS);
    int fd;
    while ((fd = open(g->release, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0 && errno == ENXIO &&
           tu_now_ns() < deadline)
        sfx_sleep_ms(1);
    if (fd < 0)
        return -errno;
    int rc = write(fd, "R", 1) == 1 ? 0 : -EIO;
    close(fd);
    return rc;
}

/* ---- a blocking caller on a thread of its own ---- */

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    c->rc = shmipc_call(c->st, c->req, c->n, &c->m, c->timeout_ms);
    return NULL;
}

int sfx_caller_start(struct caller *c, shmipc_stream *st, const void *req, size_t n,
                     int timeout_ms)
{
    memset(c, 0, sizeof(*c));
    c->st = st;
    c->req = req;
    c->n = n;
    c->timeout_ms = timeout_ms;
    int rc = pthread_create(&c->th, NULL, caller_main, c);
    if (rc != 0)
        return -rc;
    c->running = 1;
    return 0;
}

int sfx_caller_join(struct caller *c)
{
    if (c->running) {
        pthread_join(c->th, NULL);
        c->running = 0;
    }
    return c->rc;
}

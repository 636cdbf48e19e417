/*
 * shmipc-reload-soak: hot reload under load. shmipcd serves one service
 * whose plugin file is swapped between two builds (versioned.so answers
 * "v1 " + request, versioned2.so "v2 " + request) and reloaded many times,
 * some reloads with a broken plugin (wrong ABI, failing init) that must be
 * refused while service goes on. Forked client processes (half memfd, half
 * file mode) keep requests going on many streams the whole time.
 *
 * The one rule: correctness never rests on timing. The driver publishes,
 * in a MAP_SHARED page, a sequence number that is odd while a good reload
 * runs, and the version serving while it is even. A request that started
 * and ended within one even window must carry exactly that version; one
 * that overlapped a good reload may carry either. Progress between reloads
 * is counted, not slept for; every wait has a deadline.
 *
 * Checked at the end: no request failed, was lost or answered wrong; every
 * good reload applied and every broken one was refused; each good reload
 * finished exactly one old generation; shmipcd's fds, mappings and RSS
 * did not grow beyond small bounds; shmipcd exits 0 on SIGTERM with no
 * sanitizer report; nothing of the run is left in /dev/shm or /tmp.
 * The last line on stdout:
 *   reload-soak: reloads=R refused=B requests=N failed=F lost=L rss_growth_kib=K
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "shmipc/shmipc.h"

#define MAX_CLIENTS 64
#define MAX_STREAMS 1024
#define PAD_MAX 4096
#define REQ_MAX (64 + PAD_MAX)
#define START_MS 20000      /* shmipcd to answer on its admin socket */
#define STOP_MS 30000       /* shmipcd to exit after SIGTERM */
#define ADMIN_MS 30000      /* one admin command (a reload loads a plugin) */
#define SETTLE_MS 20000     /* a state that should be reached (paused, drained) */
#define STREAM_TURNOVER 256 /* a client stream is closed and replaced this often */

/* Bounds on shmipcd's growth between the warm-up and the end (RSS: its
 * private memory, VmRSS without RssShmem). */
#define FD_SLACK 4
#define MAPS_SLACK 8
#define RSS_SLACK_KIB (8 * 1024)
/* An ASan shmipcd also holds freed memory back (its quarantine, set small
 * below, and the chunks it recycles into per-thread caches): a few MiB
 * that level off, leak or no leak (LeakSanitizer judges leaks there). */
#define ASAN_RSS_SLACK_KIB (8 * 1024)

struct opts {
    unsigned reloads, clients, streams, bad_every;
    int timeout_ms;
    char shmipcd[4096], shmipcctl[4096], plugins[4096];
};

/* ---- what the driver and the clients share ----
 *
 * One MAP_SHARED anonymous mapping made before any fork. Every field is
 * accessed through the helpers below: seq_cst for the driver's control
 * words (the seqlock is easiest to get right that way and costs nothing
 * at this rate), relaxed for counters that are only summed. */
struct client_slot {
    /* written by the client's threads, read by the driver */
    uint64_t done; /* requests finished, whatever the outcome */
    uint64_t ok, failed, lost, wrong, mixed, v1, v2, extra;
    uint64_t overlapped;        /* answered right while a good reload ran */
    int32_t first_err;          /* first error code a thread met */
    uint32_t threads;           /* stream threads started */
    uint32_t parked;            /* threads waiting while `pause` is set */
    int32_t open_rc;            /* shmipc_client_open's result, 1 until known */
    uint32_t finished;          /* the client wrote its last counts */
} __attribute__((aligned(64))); /* clients write their own line only */

struct shared {
    /* written by the driver only */
    uint32_t stop, pause;
    uint32_t seq;     /* odd while a good reload is in progress */
    uint32_t version; /* 1 or 2: what serves while seq is even */
    char pad_[48];
    struct client_slot c[MAX_CLIENTS];
};

static uint32_t ld(const uint32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static void st(uint32_t *p, uint32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}

static void add64(uint64_t *p, uint64_t v)
{
    __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}

static uint64_t ld64(const uint64_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static struct shared *sh;
static volatile sig_atomic_t interrupted;

/* ---- small helpers ---- */

/* du_sleep_ms, but cut short by SIGINT or SIGTERM. */
static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !interrupted)
        ;
}

static int failures;

#define fail(...) du_fail("reload-soak", &failures, __VA_ARGS__)

/* ---- shmipcd's resources, seen from /proc ---- */

struct usage {
    long rss_kib, anon_kib, file_kib, shmem_kib; /* VmRSS and its parts */
    int fds;
    int maps;       /* file-backed or shared: libraries, plugin copies, pools */
    int maps_all;   /* every line, with the allocators' private anonymous ones */
    int copies;     /* distinct plugin copies mapped (in shmipcd's own tmpdir) */
    int asan, tsan; /* libasan / libtsan is mapped */
};

static int proc_usage(pid_t pid, struct usage *u)
{
    char path[64];
    memset(u, 0, sizeof(*u));
    u->rss_kib = -1;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    char *s = du_read_file(path, NULL);
    u->rss_kib = du_status_kib(s, "VmRSS");
    u->anon_kib = du_status_kib(s, "RssAnon");
    u->file_kib = du_status_kib(s, "RssFile");
    u->shmem_kib = du_status_kib(s, "RssShmem");
    free(s);
    u->fds = du_count_fds(pid);
    /* malloc and the sanitizer runtimes map and unmap private anonymous
     * memory as they please (counted in RSS): only the rest is bounded. */
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    s = du_read_file(path, NULL);
    char copy_dir[64], last_copy[512] = "";
    snprintf(copy_dir, sizeof(copy_dir), "/shmipcd-%d-", (int)pid);
    for (char *line = s, *nl; line != NULL && *line != '\0'; line = nl != NULL ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        char perms[8] = "", name[512] = "";
        if (sscanf(line, "%*s %7s %*s %*s %*s %511[^\n]", perms, name) < 1)
            continue;
        u->maps_all++;
        u->maps += name[0] == '/' || perms[3] == 's';
        u->asan |= strstr(name, "/libasan") != NULL;
        u->tsan |= strstr(name, "/libtsan") != NULL;
        if (strstr(name, copy_dir) != NULL && strcmp(name, last_copy) != 0) {
            u->copies++; /* a library's mappings are adjacent lines */
            snprintf(last_copy, sizeof(last_copy), "%s", name);
        }
    }
    free(s);
    return u->rss_kib >= 0 && u->fds >= 0 ? 0 : -1;
}

/* ---- the admin socket ---- */

struct status {
    unsigned long reloads, refused, finished;
    unsigned draining, generation;
    char version[32];
};

static int parse_status(const char *txt, struct status *s)
{
    memset(s, 0, sizeof(*s));
    const char *p = txt != NULL ? strstr(txt, "\nreloads ") : NULL;
    const char *q = txt != NULL ? strstr(txt, "\nservice soak: listen ") : NULL;
    q = q != NULL ? strstr(q, ", plugin versioned ") : NULL;
    return p != NULL && q != NULL &&
                   sscanf(p + 1,
                          "reloads %lu (refused %lu), generations finished %lu, still "
                          "draining %u",
                          &s->reloads, &s->refused, &s->finished, &s->draining) == 4 &&
                   sscanf(q, ", plugin versioned %31[^,], generation %u", s->version,
                          &s->generation) == 2
               ? 0
               : -1;
}

/* Polls status until nothing drains any more; 0 and *s, or -1. */
static int wait_drained(const char *admin, struct status *s)
{
    uint64_t dl = du_deadline(SETTLE_MS);
    char txt[16384];
    int n;
    do {
        n = du_admin(admin, "status", txt, sizeof(txt), ADMIN_MS);
        if (parse_status(txt, s) == 0 && s->draining == 0 && strstr(txt, "draining generations 0,"))
            return 0;
        sleep_ms(10);
    } while (!du_past(dl) && !interrupted);
    fprintf(stderr, "reload-soak: old generations still draining:\n%s\n",
            n > 0 ? txt : "(no reply)");
    return -1;
}

/* ---- client processes ---- */

struct cl_ctx {
    unsigned id;
    shmipc_client *c;
    struct client_slot *slot;
    int timeout_ms;
};

struct th_ctx {
    struct cl_ctx *cl;
    unsigned stream;
    pthread_t th;
};

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void note_err(struct client_slot *s, int rc)
{
    int32_t zero = 0;
    __atomic_compare_exchange_n(&s->first_err, &zero, rc, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* Parks while the driver pauses traffic (no request in flight then). */
static void park(struct client_slot *s)
{
    __atomic_add_fetch(&s->parked, 1, __ATOMIC_SEQ_CST);
    while (ld(&sh->pause) && !ld(&sh->stop))
        sleep_ms(1);
    __atomic_sub_fetch(&s->parked, 1, __ATOMIC_SEQ_CST);
}

/* One request and its answer. Returns 0 when the stream can go on. */
static int one_request(struct th_ctx *t, shmipc_stream *s, uint64_t n, uint64_t *rng, uint8_t *req,
                       uint8_t *resp)
{
    struct client_slot *slot = t->cl->slot;
    int len =
        snprintf((char *)req, 64, "c%u s%u n%llu ", t->cl->id, t->stream, (unsigned long long)n);
    size_t pad = (size_t)(xorshift(rng) % (PAD_MAX + 1));
    for (size_t i = 0; i < pad; i += 8) {
        uint64_t r = xorshift(rng);
        memcpy(req + len + i, &r, pad - i < 8 ? pad - i : 8);
    }
    size_t rlen = (size_t)len + pad;

    uint32_t s1 = ld(&sh->seq), v = ld(&sh->version);
    int rc = shmipc_stream_write(s, req, rlen);
    if (rc == 0)
        rc = shmipc_stream_flush(s);
    shmipc_msg m = {0};
    if (rc == 0)
        rc = shmipc_stream_recv(s, &m, t->cl->timeout_ms);
    uint32_t s2 = ld(&sh->seq);
    add64(&slot->done, 1);
    if (rc == SHMIPC_ETIMEDOUT) {
        add64(&slot->lost, 1);
        fprintf(stderr, "reload-soak: client %u stream %u request %llu: no answer in %d ms\n",
                t->cl->id, t->stream, (unsigned long long)n, t->cl->timeout_ms);
        return -1;
    }
    if (rc < 0) {
        add64(&slot->failed, 1);
        note_err(slot, rc);
        fprintf(stderr, "reload-soak: client %u stream %u request %llu: %s\n", t->cl->id, t->stream,
                (unsigned long long)n, shmipc_strerror(rc));
        return -1;
    }
    size_t got = m.len <= rlen + 3 ? shmipc_msg_copy(&m, 0, resp, m.len) : 0;
    int good = m.len == rlen + 3 && got == m.len && resp[0] == 'v' &&
               (resp[1] == '1' || resp[1] == '2') && resp[2] == ' ' &&
               memcmp(resp + 3, req, rlen) == 0;
    size_t mlen = m.len;
    shmipc_msg_release(&m);
    if (!good) {
        add64(&slot->wrong, 1);
        fprintf(stderr,
                "reload-soak: client %u stream %u request %llu: wrong answer (%zu bytes for a "
                "%zu-byte request, starts \"%.3s\")\n",
                t->cl->id, t->stream, (unsigned long long)n, mlen, rlen,
                got >= 3 ? (const char *)resp : "");
        return -1;
    }
    unsigned version = resp[1] - '0';
    add64(version == 1 ? &slot->v1 : &slot->v2, 1);
    /* Within one even window the version is known exactly. */
    if (s1 == s2 && (s1 & 1) == 0 && version != v) {
        add64(&slot->mixed, 1);
        fprintf(stderr,
                "reload-soak: client %u stream %u request %llu: answered by v%u while v%u "
                "served (seq %u)\n",
                t->cl->id, t->stream, (unsigned long long)n, version, v, s1);
        return 0;
    }
    add64(&slot->ok, 1);
    if (s1 != s2 || (s1 & 1))
        add64(&slot->overlapped, 1);
    return 0;
}

/* No answer may be left over once every request was answered once. */
static void check_no_extra(struct client_slot *slot, shmipc_stream *s)
{
    shmipc_msg m;
    int rc = shmipc_stream_recv(s, &m, 0);
    if (rc == 0) {
        shmipc_msg_release(&m);
        add64(&slot->extra, 1);
    }
}

static void *stream_thread(void *arg)
{
    struct th_ctx *t = arg;
    struct client_slot *slot = t->cl->slot;
    uint8_t *req = malloc(REQ_MAX), *resp = malloc(REQ_MAX + 8);
    uint64_t rng = (uint64_t)(t->cl->id + 1) * 0x9e3779b97f4a7c15ull ^ (t->stream + 1) * 7919u;
    shmipc_stream *s = NULL;
    uint64_t n = 0, on_stream = 0;
    if (req == NULL || resp == NULL) {
        add64(&slot->failed, 1);
        note_err(slot, -ENOMEM);
        goto out;
    }
    while (!ld(&sh->stop)) {
        if (ld(&sh->pause)) {
            park(slot);
            continue;
        }
        if (s == NULL) {
            int rc = shmipc_client_get(t->cl->c, &s);
            if (rc < 0) {
                add64(&slot->failed, 1);
                add64(&slot->done, 1);
                note_err(slot, rc);
                s = NULL;
                sleep_ms(10);
                continue;
            }
            on_stream = 0;
        }
        if (one_request(t, s, n++, &rng, req, resp) < 0) {
            shmipc_stream_close(s); /* its state is unknown: start afresh */
            s = NULL;
            continue;
        }
        /* Now and then a fresh stream: opens and closes during reloads. */
        if (++on_stream == STREAM_TURNOVER) {
            check_no_extra(slot, s);
            shmipc_stream_close(s);
            s = NULL;
        }
    }
out:
    if (s != NULL) {
        check_no_extra(slot, s);
        shmipc_client_put(t->cl->c, s);
    }
    free(req);
    free(resp);
    return NULL;
}

static int client_main(const struct opts *o, unsigned id, const char *address,
                       const char *shm_prefix)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    struct client_slot *slot = &sh->c[id];
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "/dev/shm/%sc%u", shm_prefix, id);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = address;
    cfg.mode = id % 2 ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
    cfg.path_prefix = prefix;
    cfg.sessions = o->streams >= 4 ? 4 : o->streams;
    cfg.pool_bytes = 8u << 20;
    cfg.connect_timeout_ms = 5000;
    struct cl_ctx cl = {id, NULL, slot, o->timeout_ms};
    int rc = shmipc_client_open(&cfg, &cl.c);
    st((uint32_t *)&slot->open_rc, (uint32_t)rc);
    if (rc < 0)
        return 1;
    struct th_ctx *th = calloc(o->streams, sizeof(*th));
    if (th == NULL)
        return 1;
    unsigned started = 0;
    for (; started < o->streams; started++) {
        th[started] = (struct th_ctx){&cl, started, 0};
        if (pthread_create(&th[started].th, NULL, stream_thread, &th[started]) != 0)
            break;
        __atomic_add_fetch(&slot->threads, 1, __ATOMIC_SEQ_CST);
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(th[i].th, NULL);
    free(th);
    shmipc_client_close(cl.c);
    st(&slot->finished, 1);
    return started == o->streams ? 0 : 1;
}

static pid_t start_client(const struct opts *o, unsigned id, const char *address,
                          const char *shm_prefix)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(client_main(o, id, address, shm_prefix));
    return pid;
}

/* ---- shmipcd ---- */

/* shmipcd dies with the driver. An ASan build keeps 256 MiB of freed
 * memory in quarantine by default: the soak's frees would show as RSS
 * growth until that filled. A small quarantine still catches a use soon
 * after a free (what a retired generation would suffer). A release build
 * ignores the variable. */
static const struct du_spawn_opts daemon_spawn = {
    .die_with_parent = 1,
    .asan_defaults = "quarantine_size_mb=1:thread_local_quarantine_size_kb=64",
};

/* `shmipcctl -s ADMIN reload`: its exit code; its output in out. */
static int ctl_reload(const struct opts *o, const char *admin, char *out, size_t cap)
{
    const char *argv[] = {o->shmipcctl, "-s", admin, "reload", NULL};
    return du_run_capture(argv, out, cap, ADMIN_MS, NULL);
}

/* ---- the driver ---- */

struct run {
    struct opts o;
    struct du_daemon d;
    char address[200]; /* the service's */
    char shm_prefix[64];
    pid_t kids[MAX_CLIENTS];
    unsigned nkids;
    shmipc_client *probe;
    unsigned good, bad, refused, applied;
    uint64_t probe_fail;
};

static void plugin_src(const struct run *r, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s.so", r->o.plugins, name);
}

/* Puts test plugin `name` in place as <dir>/plugin.so, the file the
 * service loads: shmipcd sees either the old file or the whole new one. */
static int install_plugin(const struct run *r, const char *name, char *src, size_t cap)
{
    plugin_src(r, name, src, cap);
    return du_copy_file(src, du_path(&r->d, "plugin.so"));
}

static uint64_t total(size_t field_off)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < MAX_CLIENTS; i++)
        sum += ld64((const uint64_t *)((const char *)&sh->c[i] + field_off));
    return sum;
}

#define TOTAL(f) total(offsetof(struct client_slot, f))

/* Waits until every client did `more` further requests since *base (then
 * updated). 0, or -1 at the deadline. */
static int wait_progress(struct run *r, uint64_t *base, uint64_t more)
{
    uint64_t dl = du_deadline(r->o.timeout_ms * 2 + 10000);
    for (;;) {
        unsigned behind = 0;
        for (unsigned i = 0; i < r->nkids; i++)
            behind += ld64(&sh->c[i].done) < base[i] + more;
        if (behind == 0)
            break;
        if (du_past(dl) || interrupted) {
            for (unsigned i = 0; i < r->nkids; i++)
                fprintf(stderr, "reload-soak: client %u: %llu requests done, waiting for %llu\n", i,
                        (unsigned long long)ld64(&sh->c[i].done),
                        (unsigned long long)(base[i] + more));
            return -1;
        }
        sleep_ms(1);
    }
    for (unsigned i = 0; i < r->nkids; i++)
        base[i] = ld64(&sh->c[i].done);
    return 0;
}

/* Stops traffic: every stream thread parked, nothing in flight. */
static int pause_clients(struct run *r)
{
    st(&sh->pause, 1);
    uint64_t dl = du_deadline(r->o.timeout_ms + SETTLE_MS);
    for (;;) {
        unsigned idle = 0;
        for (unsigned i = 0; i < r->nkids; i++)
            idle += ld(&sh->c[i].parked) == ld(&sh->c[i].threads) &&
                    ld(&sh->c[i].threads) == r->o.streams;
        if (idle == r->nkids)
            return 0;
        if (du_past(dl) || interrupted)
            return -1;
        sleep_ms(1);
    }
}

/* The driver's own request: the answer must come from version `want`. */
static void probe(struct run *r, unsigned want, unsigned reload)
{
    shmipc_stream *s = NULL;
    char req[64], resp[80];
    int len = snprintf(req, sizeof(req), "probe %u", reload);
    int rc = shmipc_client_get(r->probe, &s);
    shmipc_msg m = {0};
    if (rc == 0)
        rc = shmipc_call(s, req, (size_t)len, &m, r->o.timeout_ms);
    size_t n = rc == 0 ? shmipc_msg_copy(&m, 0, resp, sizeof(resp) - 1) : 0;
    resp[n] = '\0';
    char expect[80];
    snprintf(expect, sizeof(expect), "v%u %s", want, req);
    if (rc != 0 || m.len != n || strcmp(resp, expect) != 0) {
        fail("reload %u: probe answered %s \"%s\", expected \"%s\"", reload,
             rc ? shmipc_strerror(rc) : "with", resp, expect);
        r->probe_fail++;
    }
    shmipc_msg_release(&m);
    if (s != NULL) {
        if (rc == 0)
            shmipc_client_put(r->probe, s);
        else
            shmipc_stream_close(s);
    }
}

static int good_reload(struct run *r, unsigned i)
{
    unsigned from = ld(&sh->version), to = 3 - from;
    char src[4200], want[160];
    int rc = install_plugin(r, to == 1 ? "versioned" : "versioned2", src, sizeof(src));
    if (rc < 0) {
        fail("reload %u: installing %s: %s", i, src, strerror(-rc));
        return -1;
    }
    uint32_t seq = ld(&sh->seq);
    st(&sh->seq, seq + 1); /* odd: either version may answer now */
    char rep[8192];
    int n = du_admin(r->d.admin, "reload", rep, sizeof(rep), ADMIN_MS);
    r->good++;
    snprintf(want, sizeof(want),
             "service soak: generation %u (plugin versioned %u.0.0), "
             "generation %u draining\n",
             r->applied + 2, to, r->applied + 1);
    int ok = n > 0 && strncmp(rep, "reload: done\n", 13) == 0 && strstr(rep, want) != NULL;
    if (ok) {
        r->applied++;
        st(&sh->version, to);
    } else {
        fail("reload %u (v%u -> v%u) did not apply; reply:\n%s", i, from, to,
             n > 0 ? rep : "(none)");
    }
    st(&sh->seq, seq + 2);
    return ok ? 0 : -1;
}

/* A broken plugin: refused with its cause, the old generation serves on;
 * then the good file goes back in place. */
static int bad_reload(struct run *r, unsigned i)
{
    const char *name = r->bad % 2 == 0 ? "badabi" : "failinit";
    const char *cause = r->bad % 2 == 0 ? "ABI major" : "init failed";
    unsigned serving = ld(&sh->version);
    char src[4200], out[8192];
    int rc = install_plugin(r, name, src, sizeof(src));
    if (rc < 0) {
        fail("reload %u: installing %s: %s", i, src, strerror(-rc));
        return -1;
    }
    r->bad++;
    /* Through shmipcctl: a refused reload must make it fail. */
    rc = ctl_reload(&r->o, r->d.admin, out, sizeof(out));
    int ok = rc != 0 && rc != -1 && strncmp(out, "error:", 6) == 0 && strstr(out, cause) != NULL &&
             strstr(out, "keeps serving") != NULL;
    if (ok)
        r->refused++;
    else
        fail("reload %u with %s: shmipcctl exit %d, output:\n%s", i, name, rc, out);
    rc = install_plugin(r, serving == 1 ? "versioned" : "versioned2", src, sizeof(src));
    if (rc < 0) {
        fail("reload %u: restoring %s: %s", i, src, strerror(-rc));
        return -1;
    }
    return ok ? 0 : -1;
}

static int setup(struct run *r)
{
    int rc = du_init(&r->d, "/tmp/shmipc-soak-XXXXXX");
    if (rc < 0) {
        fail("mkdtemp: %s", strerror(-rc));
        return -1;
    }
    snprintf(r->d.shmipcd, sizeof(r->d.shmipcd), "%s", r->o.shmipcd);
    r->d.spawn = daemon_spawn;
    snprintf(r->address, sizeof(r->address), "%s", du_addr(&r->d, "soak"));
    snprintf(r->shm_prefix, sizeof(r->shm_prefix), "shmipc-soak-%d-", (int)getpid());
    char src[4200];
    rc = install_plugin(r, "versioned", src, sizeof(src));
    if (rc < 0) {
        fail("installing %s: %s", src, strerror(-rc));
        return -1;
    }
    struct du_conf c = {.n = 0};
    du_conf_head(&c, &r->d, "drain_timeout_ms = 5000;");
    du_conf_service(&c, &r->d, 1, "soak", du_path(&r->d, "plugin.so"), NULL);
    rc = du_conf_write(&c, &r->d, "shmipcd.conf");
    if (rc < 0) {
        fail("writing %s: %s", r->d.conf, strerror(-rc));
        return -1;
    }
    uint64_t dl = du_deadline(START_MS);
    rc = du_start(&r->d, START_MS);
    if (rc != 0) {
        fail(rc > 0 ? "shmipcd exited at start with %d" : "shmipcd did not start (%d)", rc);
        return -1;
    }
    char txt[16384];
    struct status s;
    if (du_admin(r->d.admin, "status", txt, sizeof(txt), ADMIN_MS) <= 0 ||
        parse_status(txt, &s) < 0) {
        fail("shmipcd's status does not parse:\n%s", txt);
        return -1;
    }
    if (strcmp(s.version, "1.0.0") != 0 || s.generation != 1) {
        fail("shmipcd started with versioned %s generation %u", s.version, s.generation);
        return -1;
    }
    st(&sh->version, 1);
    for (unsigned i = 0; i < r->o.clients; i++) {
        pid_t pid = start_client(&r->o, i, r->address, r->shm_prefix);
        if (pid < 0) {
            fail("fork: %s", strerror(errno));
            return -1;
        }
        r->kids[r->nkids++] = pid;
    }
    /* Threads only now: every fork above came from a one-threaded process. */
    char probe_prefix[256];
    snprintf(probe_prefix, sizeof(probe_prefix), "/dev/shm/%sprobe", r->shm_prefix);
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = r->address;
    cfg.path_prefix = probe_prefix; /* memfd mode: only its memfds' names */
    cfg.pool_bytes = 1u << 20;
    cfg.connect_timeout_ms = 5000;
    if ((rc = shmipc_client_open(&cfg, &r->probe)) < 0) {
        r->probe = NULL;
        fail("probe client: %s", shmipc_strerror(rc));
        return -1;
    }
    for (unsigned i = 0; i < r->nkids; i++) {
        while ((int32_t)ld((uint32_t *)&sh->c[i].open_rc) == 1 && !du_past(dl))
            sleep_ms(1);
        int32_t orc = (int32_t)ld((uint32_t *)&sh->c[i].open_rc);
        if (orc != 0) {
            fail("client %u: shmipc_client_open: %s", i,
                 orc == 1 ? "no result" : shmipc_strerror(orc));
            return -1;
        }
    }
    return 0;
}

/* Stops the clients and sums their counts. */
static void stop_clients(struct run *r)
{
    st(&sh->pause, 0);
    st(&sh->stop, 1);
    for (unsigned i = 0; i < r->nkids; i++) {
        int rc = du_reap(r->kids[i], r->o.timeout_ms + SETTLE_MS);
        if (rc != 0)
            fail("client %u exited with %d", i, rc);
        else if (!ld(&sh->c[i].finished))
            fail("client %u did not finish", i);
        r->kids[i] = 0;
    }
    r->nkids = 0;
}

static void teardown(struct run *r)
{
    if (r->probe != NULL)
        shmipc_client_close(r->probe);
    r->probe = NULL;
    st(&sh->stop, 1);
    for (unsigned i = 0; i < r->nkids; i++) {
        if (r->kids[i] > 0) {
            kill(r->kids[i], SIGKILL);
            du_reap(r->kids[i], 5000);
        }
    }
    r->nkids = 0;
    pid_t dpid = r->d.pid;
    if (r->d.pid > 0) {
        int rc = du_stop(&r->d, SIGTERM, STOP_MS);
        if (rc != 0)
            fail("shmipcd exited with %d after SIGTERM", rc);
    }
    if (r->d.dir[0] == '\0')
        return;
    const char *san = du_log_check(&r->d, failures != 0);
    if (san != NULL)
        fail("shmipcd's log holds a %s report", san);
    /* shmipcd removes the directory of its private plugin copies. */
    if (dpid > 0 && du_daemon_tmpdirs(dpid, 0) != 0)
        fail("shmipcd left /tmp/shmipcd-%d-* behind", (int)dpid);
    int left = du_count_prefix("/dev/shm", r->shm_prefix);
    if (left != 0) {
        fail("%d files with prefix %s left in /dev/shm:", left, r->shm_prefix);
        du_show_prefix("/dev/shm", r->shm_prefix);
        du_remove_prefix("/dev/shm", r->shm_prefix);
    }
    int rc = du_remove_dir(r->d.dir);
    if (rc < 0)
        fail("rmdir %s: %s", r->d.dir, strerror(-rc));
    if (du_exists(r->d.dir))
        fail("%s is still there", r->d.dir);
    r->d.dir[0] = '\0';
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipc-reload-soak [--reloads N] [--clients N] [--streams N] "
               "[--bad-every K]\n"
               "         [--shmipcd PATH] [--plugins DIR] [--timeout-ms MS]\n"
               "  --reloads N     reloads to run (default 200)\n"
               "  --clients N     client processes, half memfd, half file mode (default 4)\n"
               "  --streams N     streams per client, one thread each (default 16)\n"
               "  --bad-every K   every K-th reload uses a broken plugin, 0 never (default 10)\n"
               "  --shmipcd PATH  the daemon (default: shmipcd next to this program)\n"
               "  --plugins DIR   test plugins (default: ../tests/plugins from this program)\n"
               "  --timeout-ms MS per request (default 5000)\n");
}

static int parse_uint(const char *s, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {
        {"reloads", required_argument, NULL, 'r'},
        {"clients", required_argument, NULL, 'c'},
        {"streams", required_argument, NULL, 's'},
        {"bad-every", required_argument, NULL, 'b'},
        {"shmipcd", required_argument, NULL, 'd'},
        {"plugins", required_argument, NULL, 'p'},
        {"timeout-ms", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->reloads = 200;
    o->clients = 4;
    o->streams = 16;
    o->bad_every = 10;
    o->timeout_ms = 5000;
    const char *dir = du_exe_dir();
    snprintf(o->shmipcd, sizeof(o->shmipcd), "%s/shmipcd", dir);
    snprintf(o->plugins, sizeof(o->plugins), "%s/../tests/plugins", dir);
    int opt;
    unsigned v;
    while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case 'r':
            bad = parse_uint(optarg, 1, 1000000, &o->reloads);
            break;
        case 'c':
            bad = parse_uint(optarg, 1, MAX_CLIENTS, &o->clients);
            break;
        case 's':
            bad = parse_uint(optarg, 1, MAX_STREAMS, &o->streams);
            break;
        case 'b':
            bad = parse_uint(optarg, 0, 1000000, &o->bad_every);
            break;
        case 'd':
            snprintf(o->shmipcd, sizeof(o->shmipcd), "%s", optarg);
            break;
        case 'p':
            snprintf(o->plugins, sizeof(o->plugins), "%s", optarg);
            break;
        case 't':
            bad = parse_uint(optarg, 10, 600000, &v);
            o->timeout_ms = (int)v;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            bad = 1;
        }
        if (bad) {
            if (opt != '?')
                fprintf(stderr, "reload-soak: bad value for --%s: %s\n",
                        opt == 'r'   ? "reloads"
                        : opt == 'c' ? "clients"
                        : opt == 's' ? "streams"
                        : opt == 'b' ? "bad-every"
                                     : "timeout-ms",
                        optarg);
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return -1;
    }
    /* shmipcctl lives beside shmipcd. */
    snprintf(o->shmipcctl, sizeof(o->shmipcctl), "%s", o->shmipcd);
    char *slash = strrchr(o->shmipcctl, '/');
    snprintf(slash != NULL ? slash + 1 : o->shmipcctl,
             sizeof(o->shmipcctl) - (size_t)(slash != NULL ? slash + 1 - o->shmipcctl : 0),
             "shmipcctl");
    return 0;
}

int main(int argc, char **argv)
{
    static struct run r;
    if (parse_opts(argc, argv, &r.o) < 0)
        return 2;
    const char *need[] = {r.o.shmipcd, r.o.shmipcctl};
    for (unsigned i = 0; i < 2; i++) {
        if (access(need[i], X_OK) < 0) {
            fprintf(stderr, "reload-soak: %s: %s\n", need[i], strerror(errno));
            return 2;
        }
    }
    static const char *const plugins[] = {"versioned", "versioned2", "badabi", "failinit"};
    for (unsigned i = 0; i < 4; i++) {
        char p[4200];
        plugin_src(&r, plugins[i], p, sizeof(p));
        if (access(p, R_OK) < 0) {
            fprintf(stderr, "reload-soak: %s: %s\n", p, strerror(errno));
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("reload-soak: mmap");
        return 1;
    }
    for (unsigned i = 0; i < MAX_CLIENTS; i++)
        sh->c[i].open_rc = 1;
    uint64_t t0 = du_now_ns();
    struct usage base = {0}, end = {0};
    long rss_growth = 0;
    int measured = 0;
    struct status fin = {0};
    /* The baseline comes after some reloads of each kind have run. */
    unsigned warm = r.o.reloads / 10 > 2 ? r.o.reloads / 10 : 2;
    if (warm > r.o.reloads)
        warm = r.o.reloads;

    if (setup(&r) < 0)
        goto out;
    uint64_t base_done[MAX_CLIENTS] = {0};
    if (wait_progress(&r, base_done, 4) < 0) {
        fail("the clients made no progress before the first reload");
        goto out;
    }
    probe(&r, 1, 0);
    for (unsigned i = 1; i <= r.o.reloads && !interrupted; i++) {
        int broken = r.o.bad_every > 0 && i % r.o.bad_every == 0;
        if ((broken ? bad_reload(&r, i) : good_reload(&r, i)) < 0 && failures > 20)
            break;
        probe(&r, ld(&sh->version), i);
        if (wait_progress(&r, base_done, 3) < 0) {
            fail("reload %u: the clients stopped making progress", i);
            break;
        }
        if (i == warm) {
            /* Same state as at the end: clients connected, idle, old
             * generations finished. */
            struct status s;
            if (pause_clients(&r) < 0 || wait_drained(r.d.admin, &s) < 0 ||
                proc_usage(r.d.pid, &base) < 0) {
                fail("no baseline after reload %u", i);
                break;
            }
            measured = 1;
            st(&sh->pause, 0);
        }
        if (i % 20 == 0 || i == r.o.reloads)
            fprintf(stderr,
                    "reload-soak: %u/%u reloads (%u refused), %llu requests (v1 %llu, v2 %llu), "
                    "%.1f s\n",
                    i, r.o.reloads, r.refused, (unsigned long long)TOTAL(done),
                    (unsigned long long)TOTAL(v1), (unsigned long long)TOTAL(v2),
                    (double)(du_now_ns() - t0) / 1e9);
    }
    if (interrupted)
        fail("interrupted");
    /* The end state: clients idle, every old generation finished. */
    if (pause_clients(&r) < 0) {
        fail("the clients did not pause");
    } else if (wait_drained(r.d.admin, &fin) < 0) {
        fail("old generations did not finish");
    } else if (proc_usage(r.d.pid, &end) < 0) {
        fail("cannot read /proc/%d", (int)r.d.pid);
    } else if (measured) {
        /* RssShmem is the clients' pools and queues that shmipcd maps: it
         * grows as requests touch more of their pages, up to the pools'
         * sizes, and is the clients' memory. shmipcd's own is the rest. */
        rss_growth = (end.rss_kib - end.shmem_kib) - (base.rss_kib - base.shmem_kib);
        fprintf(stderr,
                "reload-soak: shmipcd after reload %u: rss %ld KiB (anon %ld, file %ld, shmem "
                "%ld), %d fds, %d maps (%d in all); at the end: rss %ld KiB (anon %ld, file "
                "%ld, shmem %ld), %d fds, %d maps (%d in all)\n",
                warm, base.rss_kib, base.anon_kib, base.file_kib, base.shmem_kib, base.fds,
                base.maps, base.maps_all, end.rss_kib, end.anon_kib, end.file_kib, end.shmem_kib,
                end.fds, end.maps, end.maps_all);
        if (end.copies != 1)
            fail("shmipcd maps %d plugin copies at the end, expected 1 (the serving one)",
                 end.copies);
        if (end.fds > base.fds + FD_SLACK)
            fail("shmipcd's fds grew from %d to %d", base.fds, end.fds);
        if (end.maps > base.maps + MAPS_SLACK)
            fail("shmipcd's mappings grew from %d to %d", base.maps, end.maps);
        int bound = RSS_SLACK_KIB + (end.asan ? ASAN_RSS_SLACK_KIB : 0);
        if (end.tsan) /* its shadow and history grow with every access */
            fprintf(stderr, "reload-soak: TSan build: RSS growth not bounded\n");
        else if (rss_growth > bound)
            fail("shmipcd's RSS (without shared pool pages) grew by %ld KiB (bound %d%s)",
                 rss_growth, bound, end.asan ? ", ASan build" : "");
    }
    if (fin.reloads != r.good + r.bad || fin.refused != r.bad)
        fail("status says %lu reloads (refused %lu); %u ran, %u broken", fin.reloads, fin.refused,
             r.good + r.bad, r.bad);
    if (fin.finished != r.applied)
        fail("status says %lu generations finished; %u reloads applied", fin.finished, r.applied);
    if (r.applied != r.good)
        fail("%u of %u good reloads applied", r.applied, r.good);
    if (r.refused != r.bad)
        fail("%u of %u broken reloads refused", r.refused, r.bad);
    stop_clients(&r);

out:
    teardown(&r);
    uint64_t requests = TOTAL(done), failed = TOTAL(failed), lost = TOTAL(lost),
             wrong = TOTAL(wrong), mixed = TOTAL(mixed), extra = TOTAL(extra);
    if (failed || lost || wrong || mixed || extra)
        fail("requests: %llu failed, %llu lost, %llu wrong, %llu with the wrong version, %llu "
             "extra answers",
             (unsigned long long)failed, (unsigned long long)lost, (unsigned long long)wrong,
             (unsigned long long)mixed, (unsigned long long)extra);
    if (requests == 0)
        fail("no request was made");
    fprintf(stderr,
            "reload-soak: %llu requests ok (v1 %llu, v2 %llu, %llu of them overlapping a reload), "
            "%llu probes failed, %.1f s, %s\n",
            (unsigned long long)TOTAL(ok), (unsigned long long)TOTAL(v1),
            (unsigned long long)TOTAL(v2), (unsigned long long)TOTAL(overlapped),
            (unsigned long long)r.probe_fail, (double)(du_now_ns() - t0) / 1e9,
            failures ? "FAILED" : "passed");
    printf("reload-soak: reloads=%u refused=%u requests=%llu failed=%llu lost=%llu "
           "rss_growth_kib=%ld\n",
           r.good + r.bad, r.refused, (unsigned long long)requests, (unsigned long long)failed,
           (unsigned long long)lost, rss_growth);
    munmap(sh, sizeof(*sh));
    return failures ? 1 : 0;
}

/*
 * The daemon suite's fixture (tests/unit/test_daemon.c): shmipcd in a
 * directory of its own, shmipcctl, stats parsing and forked client
 * children. What each offers, and who owns what, is in daemon_fixture.h.
 */
#include "daemon_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every program this suite starts (shmipcd, shmipcctl) is forked with an
 * alarm that survives the exec: one a crashed test left behind dies
 * within a minute. */
static const struct du_spawn_opts spawn_opts = {.alarm_s = 60};

/* The /dev/shm name prefix of this run (pid of the test program, taken
 * before any fork so the children share it); file-mode clients add a
 * letter, the library adds "_<pid>...". */
const char *dfx_shm_name(void)
{
    static char b[64];
    if (b[0] == '\0')
        snprintf(b, sizeof(b), "shmipc-dmntest-%d-", (int)getpid());
    return b;
}

int dfx_run_capture(const char *const *argv, char *out, size_t cap)
{
    return du_run_capture(argv, out, cap, CMD_MS, &spawn_opts);
}

/* ---- the daemon ---- */

char *dfx_log(const struct du_daemon *d)
{
    char *t = du_read_file(d->log, NULL);
    return t != NULL ? t : strdup("");
}

int dfx_log_count(const struct du_daemon *d, const char *needle)
{
    char *t = dfx_log(d);
    int n = du_count_str(t, needle);
    free(t);
    return n;
}

/* shmipcctl -s <admin> args...: exit code, output in out. */
int dfx_ctl(const struct du_daemon *d, char *out, size_t cap, const char *a1, const char *a2)
{
    const char *argv[] = {du_bin_path("shmipcctl"), "-s", d->admin, a1, a2, NULL};
    int rc = dfx_run_capture(argv, out, cap);
    const char *san = du_sanitizer_report(out);
    if (san != NULL)
        fprintf(stderr, "\n  shmipcctl %s: %s:\n%s\n", a1, san, out);
    CU_ASSERT_PTR_NULL(san);
    return rc;
}

/* ---- stats parsing (roughly: the formats are admin.c's) ---- */

int dfx_stats_svc(const char *txt, const char *svc, struct svc_stats_txt *s)
{
    char pat[96];
    snprintf(pat, sizeof(pat), "service %s: requests ", svc);
    const char *p = strstr(txt, pat);
    if (p == NULL)
        return -1;
    p += strlen(pat) - strlen("requests ");
    return sscanf(p,
                  "requests %lu, bytes in %lu out %lu, handler errors %lu, sessions opened %lu "
                  "closed %lu, handshakes failed %lu",
                  &s->requests, &s->bytes_in, &s->bytes_out, &s->handler_errors, &s->opened,
                  &s->closed, &s->hs_failed) == 7
               ? 0
               : -1;
}

int dfx_stats_pools(const char *txt, unsigned long *n)
{
    const char *p = strstr(txt, "pools mapped: ");
    return p != NULL && sscanf(p, "pools mapped: %lu", n) == 1 ? 0 : -1;
}

/* "key":N inside the JSON object of service `svc`. */
int dfx_json_svc(const char *js, const char *svc, const char *key, unsigned long *out)
{
    char pat[96], k[64];
    snprintf(pat, sizeof(pat), "{\"name\":\"%s\",", svc);
    const char *p = strstr(js, pat);
    if (p == NULL)
        return -1;
    const char *end = strchr(p, '}');
    snprintf(k, sizeof(k), "\"%s\":", key);
    const char *q = strstr(p, k);
    if (q == NULL || end == NULL || q > end)
        return -1;
    return sscanf(q + strlen(k), "%lu", out) == 1 ? 0 : -1;
}

int dfx_json_top(const char *js, const char *key, unsigned long *out)
{
    char k[64];
    snprintf(k, sizeof(k), "\"%s\":", key);
    const char *q = strstr(js, k);
    return q != NULL && sscanf(q + strlen(k), "%lu", out) == 1 ? 0 : -1;
}

/* Polls `shmipcctl stats` until service svc has every session closed (and
 * at least min_closed of them) and `pools` pools are mapped. The last
 * output stays in out. 0 when reached. */
int dfx_wait_settled(const struct du_daemon *d, const char *svc, unsigned long min_closed,
                     unsigned long pools, char *out, size_t cap)
{
    uint64_t dl = du_deadline(POLL_MS);
    struct svc_stats_txt s;
    unsigned long np = ~0ul;
    do {
        if (dfx_ctl(d, out, cap, "stats", NULL) == 0 && dfx_stats_svc(out, svc, &s) == 0 &&
            dfx_stats_pools(out, &np) == 0 && s.opened == s.closed && s.closed >= min_closed &&
            np == pools)
            return 0;
        du_sleep_ms(20);
    } while (!du_past(dl));
    fprintf(stderr, "\n  stats did not settle (service %s, %lu closed, %lu pools):\n%s\n", svc,
            min_closed, pools, out);
    return -1;
}

/* ---- payloads ---- */

static void fill(uint8_t *b, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull | 1;
    for (size_t i = 0; i < n; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(b + i, &x, n - i < 8 ? n - i : 8);
    }
}

static uint64_t req_seed(uint64_t base, unsigned stream, unsigned round)
{
    return base * 1000003u + (uint64_t)stream * 65537u + round;
}

/* Sizes around the slice classes (8172/32748/131052), an empty message,
 * and 1 MiB once per round per client (on a rotating stream). */
size_t dfx_req_size(unsigned stream, unsigned round, size_t max)
{
    static const uint32_t sizes[] = {0,     1,     7,     64,    500,    4096,   8172,  8173,
                                     20000, 32748, 32749, 65536, 131052, 131053, 250000};
    const unsigned n = sizeof(sizes) / sizeof(sizes[0]);
    if (max >= (1u << 20) && (stream + round) % 16 == 0)
        return 1u << 20;
    size_t s = sizes[(stream * 7 + round * 3) % n];
    return s <= max ? s : s % (max + 1);
}

/* 1 when m is exactly the n bytes at want. */
static int msg_equals(const shmipc_msg *m, const uint8_t *want, size_t n)
{
    if (m->len != n)
        return 0;
    size_t at = 0;
    for (unsigned i = 0; i < m->niov; i++) {
        if (at + m->iov[i].len > n || memcmp(m->iov[i].base, want + at, m->iov[i].len) != 0)
            return 0;
        at += m->iov[i].len;
    }
    return at == n;
}

/* ---- client children ---- */

static void cl_fail(struct cl_result *r, int rc)
{
    if (r->first_err == 0)
        r->first_err = rc;
}

static void cl_report(const struct cl_args *a, const struct cl_result *r)
{
    if (write(a->res_fd, r, sizeof(*r)) != (ssize_t)sizeof(*r))
        _exit(3);
}

static int client_main(void *arg)
{
    const struct cl_args *a = arg;
    int keep[3] = {a->res_fd, a->ready_fd, a->hold_fd};
    du_close_fds_except(keep, 3);
    struct cl_result r = {0};
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = a->address;
    cfg.mode = a->mode;
    cfg.path_prefix = a->prefix;
    cfg.sessions = a->sessions ? a->sessions : 1;
    cfg.connect_timeout_ms = 5000;
    shmipc_client *c = NULL;
    r.open_rc = shmipc_client_open(&cfg, &c);
    if (r.open_rc < 0) {
        cl_report(a, &r);
        return 1;
    }
    unsigned ns = a->streams;
    shmipc_stream **st = calloc(ns, sizeof(*st));
    uint8_t **req = calloc(ns, sizeof(*req));
    size_t *len = calloc(ns, sizeof(*len));
    char *alive = calloc(ns, 1), *pending = calloc(ns, 1);
    if (st == NULL || req == NULL || len == NULL || alive == NULL || pending == NULL)
        return 4;
    for (unsigned i = 0; i < ns; i++) {
        int rc = shmipc_client_get(c, &st[i]);
        req[i] = malloc(a->max_size ? a->max_size : 1);
        if (req[i] == NULL)
            return 4;
        alive[i] = rc == 0;
        if (rc < 0) {
            st[i] = NULL;
            r.errors++;
            cl_fail(&r, rc);
        }
    }
    for (unsigned round = 0; round < a->rounds; round++) {
        unsigned live = 0;
        for (unsigned i = 0; i < ns; i++) {
            if (!alive[i])
                continue;
            int rc;
            if (a->greeter) {
                rc = shmipc_stream_write(st[i], GREETER_REQ, sizeof(GREETER_REQ) - 1);
            } else {
                len[i] = dfx_req_size(i, round, a->max_size);
                fill(req[i], len[i], req_seed(a->seed, i, round));
                rc = shmipc_stream_write(st[i], req[i], len[i]);
            }
            if (rc == 0)
                rc = shmipc_stream_flush(st[i]);
            if (rc < 0) {
                alive[i] = 0;
                r.flush_errors++;
                cl_fail(&r, rc);
                continue;
            }
            r.flushed++;
            r.marked += round == a->mark_round;
            pending[i] = 1;
            live++;
        }
        /* Every request of this round is in the queue now: tell the
         * parent (which may stop shmipcd) before reading any answer. */
        if (round == a->mark_round && a->ready_fd >= 0) {
            char one = 1;
            if (write(a->ready_fd, &one, 1) != 1)
                return 5;
        }
        for (unsigned i = 0; i < ns; i++) {
            if (!pending[i])
                continue;
            pending[i] = 0;
            shmipc_msg m;
            int rc = shmipc_stream_recv(st[i], &m, RECV_MS);
            if (rc == 0) {
                int good = a->greeter ? msg_equals(&m, (const uint8_t *)GREETER_RESP,
                                                   sizeof(GREETER_RESP) - 1)
                                      : msg_equals(&m, req[i], len[i]);
                shmipc_msg_release(&m);
                if (good) {
                    r.ok++;
                    r.marked_ok += round == a->mark_round;
                    continue;
                }
                r.bad++;
                fprintf(stderr, "\n  client %d: stream %u round %u: wrong answer\n", (int)getpid(),
                        i, round);
            } else if (rc == SHMIPC_ETIMEDOUT) {
                r.timeouts++;
            } else {
                r.errors++;
            }
            alive[i] = 0;
            cl_fail(&r, rc ? rc : -1);
        }
        if (live == 0)
            break;
    }
    if (a->hold_fd >= 0) {
        struct pollfd pfd = {a->hold_fd, POLLIN, 0};
        char b;
        if (poll(&pfd, 1, CHILD_MS) == 1 && read(a->hold_fd, &b, 1) < 0)
            return 6;
    }
    for (unsigned i = 0; i < ns; i++) {
        if (st[i] != NULL)
            shmipc_client_put(c, st[i]);
        free(req[i]);
    }
    shmipc_client_close(c);
    cl_report(a, &r);
    free(st);
    free(req);
    free(len);
    free(alive);
    free(pending);
    return 0;
}

/* ---- fixture: one daemon directory, client children ---- */

int dfx_begin(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->failures_before = CU_get_number_of_failures();
    for (int i = 0; i < MAX_KIDS; i++)
        f->kids[i].res_fd = f->kids[i].ready_fd = f->kids[i].hold_fd = -1;
    int rc = du_init(&f->d, "/tmp/shmipcd-test-XXXXXX");
    f->d.spawn = spawn_opts;
    return rc;
}

void dfx_cl_defaults(struct cl_args *a, const struct du_daemon *d, const char *svc,
                     enum shmipc_mem_mode mode, char letter)
{
    memset(a, 0, sizeof(*a));
    snprintf(a->address, sizeof(a->address), "%s", du_addr(d, svc));
    a->mode = mode;
    snprintf(a->prefix, sizeof(a->prefix), "/dev/shm/%s%c", dfx_shm_name(), letter);
    a->sessions = 1;
    a->streams = 4;
    a->rounds = 10;
    a->max_size = 65536;
    a->seed = (uint64_t)letter * 7919u + 1;
    a->ready_fd = a->hold_fd = -1;
}

/* Forks a client child; with want_ready / want_hold it gets those pipes.
 * Returns its index in f->kids or -1. */
int dfx_kid_start(struct fx *f, const struct cl_args *args, int want_ready, int want_hold)
{
    if (f->nkids >= MAX_KIDS)
        return -1;
    struct kid *k = &f->kids[f->nkids];
    k->args = *args;
    int res[2], rdy[2] = {-1, -1}, hold[2] = {-1, -1};
    if (pipe2(res, O_CLOEXEC) < 0)
        return -1;
    if (want_ready && pipe2(rdy, O_CLOEXEC) < 0)
        return -1;
    if (want_hold && pipe2(hold, O_CLOEXEC) < 0)
        return -1;
    k->args.res_fd = res[1];
    k->args.ready_fd = rdy[1];
    k->args.hold_fd = hold[0];
    k->pid = tu_fork(client_main, &k->args);
    close(res[1]);
    if (rdy[1] >= 0)
        close(rdy[1]);
    if (hold[0] >= 0)
        close(hold[0]);
    k->res_fd = res[0];
    k->ready_fd = rdy[0];
    k->hold_fd = hold[1];
    if (k->pid < 0) {
        k->pid = 0;
        return -1;
    }
    return f->nkids++;
}

/* Waits for its mark round to be flushed (a byte on the ready pipe). 0
 * when it came. */
int dfx_kid_ready(struct kid *k)
{
    struct pollfd pfd = {k->ready_fd, POLLIN, 0};
    char b;
    return poll(&pfd, 1, CHILD_MS) == 1 && read(k->ready_fd, &b, 1) == 1 ? 0 : -1;
}

static void kid_release(struct kid *k)
{
    if (k->hold_fd >= 0)
        close(k->hold_fd);
    k->hold_fd = -1;
}

/* Reaps the child and reads its result. Its exit code (-1 on timeout). */
int dfx_kid_finish(struct kid *k, struct cl_result *r, int timeout_ms)
{
    memset(r, 0, sizeof(*r));
    r->open_rc = -1;
    kid_release(k);
    int rc = k->pid > 0 ? tu_wait(k->pid, timeout_ms) : -1;
    k->pid = 0;
    if (k->res_fd >= 0) {
        struct pollfd pfd = {k->res_fd, POLLIN, 0};
        if (poll(&pfd, 1, 0) != 1 || read(k->res_fd, r, sizeof(*r)) != (ssize_t)sizeof(*r))
            r->open_rc = rc == 0 ? -EIO : r->open_rc;
        close(k->res_fd);
        k->res_fd = -1;
    }
    if (k->ready_fd >= 0)
        close(k->ready_fd);
    k->ready_fd = -1;
    if ((rc != 0 && rc != 128 + SIGKILL) || r->bad || r->timeouts)
        fprintf(stderr,
                "\n  client on %s (%s): exit %d, open %d, flushed %llu, ok %llu, bad %llu, "
                "errors %llu, timeouts %llu, first error %s\n",
                k->args.address, k->args.mode == SHMIPC_MODE_FILE ? "file" : "memfd", rc,
                r->open_rc, (unsigned long long)r->flushed, (unsigned long long)r->ok,
                (unsigned long long)r->bad, (unsigned long long)r->errors,
                (unsigned long long)r->timeouts, shmipc_err_name(r->first_err));
    return rc;
}

/* A child that must have done all its work right. */
void dfx_kid_expect_all_ok(struct kid *k)
{
    struct cl_result r;
    CHECK_EQ(dfx_kid_finish(k, &r, CHILD_MS), 0);
    CHECK_EQ(r.open_rc, 0);
    CHECK_EQ(r.ok, (uint64_t)k->args.streams * k->args.rounds);
    CHECK_EQ(r.bad, 0);
    CHECK_EQ(r.errors + r.flush_errors + r.timeouts, 0);
}

/* Kills and reaps every child left, stops shmipcd, checks its log for
 * sanitizer reports, removes the directory and this run's /dev/shm
 * files. Safe on a half-built fixture. */
void dfx_end(struct fx *f)
{
    for (int i = 0; i < f->nkids; i++) {
        struct kid *k = &f->kids[i];
        if (k->pid > 0) {
            kill(k->pid, SIGKILL);
            tu_wait(k->pid, CHILD_MS);
            k->pid = 0;
        }
        if (k->res_fd >= 0)
            close(k->res_fd);
        if (k->ready_fd >= 0)
            close(k->ready_fd);
        if (k->hold_fd >= 0)
            close(k->hold_fd);
        k->res_fd = k->ready_fd = k->hold_fd = -1;
    }
    if (f->d.pid > 0) {
        int rc = du_stop(&f->d, SIGTERM, STOP_MS);
        if (rc != 0)
            fprintf(stderr, "\n  shmipcd stopped with %d at the end of the test\n", rc);
        CU_ASSERT_EQUAL(rc, 0);
    }
    if (f->d.dir[0] == '\0')
        return;
    CU_ASSERT_PTR_NULL(du_log_check(&f->d, CU_get_number_of_failures() != f->failures_before));
    if (f->d.last_pid > 0)
        du_daemon_tmpdirs(f->d.last_pid, 1);
    du_remove_prefix("/dev/shm", dfx_shm_name());
    CU_ASSERT_EQUAL(du_remove_dir(f->d.dir), 0);
    f->d.dir[0] = '\0';
}

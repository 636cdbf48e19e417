/*
 * shmipc-hostile [--target shmipcd|echo_server|both] [--bin DIR] [--plugins DIR]
 *                [--case NAME[,NAME...]] [--list] [--verbose] [--keep]
 *
 * Acts as a malicious client against a running shmipcd and against the
 * library's echo_server (started here, each in a temp dir), one attack per
 * session, while a well-behaved client keeps sending requests and checking
 * every answer. After each case: the target process is alive, the bad
 * session was refused or closed (or stayed open where that is correct),
 * the reason is in the target's log and (shmipcd) its counters moved, the
 * good client saw no error and kept making progress. After all cases the
 * target must have let go of every fd, exit 0 on SIGTERM and leave no
 * sanitizer report. One line per case; the last line is
 *   hostile: cases=N survived=N good_client_errors=0
 * and the exit status is 0 only when every case passed.
 *
 * --list names the cases; --verbose times each on stderr; --keep leaves
 * each target's temp dir (config, log) in place.
 *
 * Binaries (shmipcd, shmipcctl, echo_server) are found next to this
 * program (the directory of /proc/self/exe) or in --bin; the echo plugin
 * in ../plugins from there, or --plugins.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "hostile.h"
#include "shmipc/errors.h"

#define GOOD_PROGRESS 20 /* answered requests the good client must add per case */
#define FD_SLACK 1       /* an admin connection in flight */

struct totals {
    unsigned cases, survived;
    uint64_t good_errors;
    unsigned hs_refused, closed, either; /* what the cases expected of this target */
};

/* For the emergency cleanup. */
static struct target *cur_target;
static int verbose, keep;
static volatile pid_t cur_good;

static void emergency(int sig)
{
    if (cur_good > 0)
        kill(cur_good, SIGKILL);
    if (cur_target != NULL) {
        for (int i = 0; i < cur_target->npids; i++)
            if (cur_target->pids[i] > 0)
                kill(cur_target->pids[i], SIGKILL);
        if (!keep)
            target_remove_dir(cur_target);
    }
    h_cleanup_shm();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int name_selected(const char *list, const char *name)
{
    if (list == NULL)
        return 1;
    size_t n = strlen(name);
    for (const char *p = list; *p != '\0';) {
        size_t k = strcspn(p, ",");
        if (k == n && strncmp(p, name, n) == 0)
            return 1;
        p += k;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* The first expected reason, without its "closed: "/"refused: " prefix. */
static const char *shown_reason(const struct case_ctx *c, const char *any_seen)
{
    const char *r = any_seen != NULL ? any_seen : c->nreasons > 0 ? c->reasons[0].text : NULL;
    if (r == NULL)
        return NULL;
    static const char *const prefixes[] = {"closed: ", "refused: "};
    for (unsigned i = 0; i < 2; i++)
        if (strncmp(r, prefixes[i], strlen(prefixes[i])) == 0)
            return r + strlen(prefixes[i]);
    return r;
}

static int run_case(struct target *t, const struct hcase *hc, struct good_shared *gs,
                    struct totals *tot)
{
    struct case_ctx c;
    memset(&c, 0, sizeof(c));
    c.t = t;
    c.good = gs;
    tot->cases++;
    if (t->died) {
        printf("case %s: FAILED: %s is not running any more (%s)\n", hc->name, t->name, t->death);
        fflush(stdout);
        return 0;
    }
    long log0 = target_log_size(t);
    struct svc_counters s0, s1;
    int have_stats = t->kind == T_SHMIPCD && target_stats(t, &s0) == 0;
    if (t->kind == T_SHMIPCD && !have_stats)
        case_fail(&c, "shmipcctl stats failed before the case");
    uint64_t r0 = __atomic_load_n(&gs->requests, __ATOMIC_RELAXED);
    uint64_t e0 = __atomic_load_n(&gs->errors, __ATOMIC_RELAXED);
    uint64_t t0 = du_now_ns();

    hc->fn(&c);
    uint64_t t1 = du_now_ns();

    char why[300];
    int alive = target_alive(t, why, sizeof(why));
    if (!alive)
        snprintf(c.fail, sizeof(c.fail), "%s", why); /* overrides: it is what matters */
    char missing[400] = "", stats_why[200] = "";
    const char *any_seen = NULL;
    char *log = NULL;
    uint64_t dl = du_deadline(H_SETTLE_MS);
    int good_ok = 0, stats_ok = 0;
    for (;;) {
        free(log);
        log = target_log_since(t, log0);
        missing[0] = '\0';
        for (int i = 0; i < c.nreasons && missing[0] == '\0'; i++) {
            int n = du_count_str(log, c.reasons[i].text);
            if (n < c.reasons[i].min)
                snprintf(missing, sizeof(missing), "log line \"%s\" seen %d times, expected %d",
                         c.reasons[i].text, n, c.reasons[i].min);
        }
        any_seen = NULL;
        for (int i = 0; i < c.nany && any_seen == NULL; i++)
            if (strstr(log, c.any_reason[i]) != NULL)
                any_seen = c.any_reason[i];
        if (c.nany > 0 && any_seen == NULL && missing[0] == '\0')
            snprintf(missing, sizeof(missing), "no log line with any expected reason (\"%s\"...)",
                     c.any_reason[0]);
        stats_ok = 1;
        stats_why[0] = '\0';
        if (have_stats && alive) {
            if (target_stats(t, &s1) < 0) {
                stats_ok = 0;
                snprintf(stats_why, sizeof(stats_why), "shmipcctl stats failed");
            } else if (s1.hs_failed - s0.hs_failed < (unsigned long)c.hs_refused) {
                stats_ok = 0;
                snprintf(stats_why, sizeof(stats_why),
                         "\"handshakes failed\" moved by %lu, expected %d",
                         s1.hs_failed - s0.hs_failed, c.hs_refused);
            } else if (s1.refused - s0.refused < (unsigned long)c.refused) {
                stats_ok = 0;
                snprintf(stats_why, sizeof(stats_why), "\"refused\" moved by %lu, expected %d",
                         s1.refused - s0.refused, c.refused);
            } else if (s1.idle_closed - s0.idle_closed < (unsigned long)c.idle_closed) {
                stats_ok = 0;
                snprintf(stats_why, sizeof(stats_why), "\"idle closed\" moved by %lu, expected %d",
                         s1.idle_closed - s0.idle_closed, c.idle_closed);
            } else if ((s1.closed - s0.closed) + (s1.hs_failed - s0.hs_failed) <
                       (unsigned long)(c.closed + c.hs_refused + c.either)) {
                stats_ok = 0;
                snprintf(stats_why, sizeof(stats_why),
                         "\"sessions closed\" + \"handshakes failed\" moved by %lu, expected %d",
                         (s1.closed - s0.closed) + (s1.hs_failed - s0.hs_failed),
                         c.closed + c.hs_refused + c.either);
            } else if (s1.closed - s0.closed < (unsigned long)c.closed) {
                stats_ok = 0;
                snprintf(stats_why, sizeof(stats_why),
                         "\"sessions closed\" moved by %lu, expected %d", s1.closed - s0.closed,
                         c.closed);
            }
        }
        good_ok = __atomic_load_n(&gs->requests, __ATOMIC_RELAXED) >= r0 + GOOD_PROGRESS;
        alive = target_alive(t, why, sizeof(why));
        if (!alive || (missing[0] == '\0' && stats_ok && good_ok) || du_now_ns() >= dl)
            break;
        du_sleep_ms(50);
    }
    uint64_t e1 = __atomic_load_n(&gs->errors, __ATOMIC_RELAXED);
    const char *san = du_sanitizer_report(log);
    if (!alive)
        snprintf(c.fail, sizeof(c.fail), "%s", why);
    else if (san != NULL)
        case_fail(&c, "%s report in the %s log (%s)", san, t->name, t->log);
    else if (e1 != e0)
        case_fail(&c, "the good client saw %llu errors (last: %s)", (unsigned long long)(e1 - e0),
                  gs->last_error);
    else if (!good_ok)
        case_fail(&c, "the good client made no progress (%llu answers in %d ms)",
                  (unsigned long long)(__atomic_load_n(&gs->requests, __ATOMIC_RELAXED) - r0),
                  H_SETTLE_MS);
    if (missing[0] != '\0')
        case_fail(&c, "%s", missing);
    if (!stats_ok)
        case_fail(&c, "%s", stats_why);
    if (c.fail[0] != '\0') {
        /* What the target said during the case, for whoever reads this. */
        size_t len = strlen(log);
        const char *from = len > 4000 ? log + len - 4000 : log;
        fprintf(stderr, "--- %s log during %s:\n%s%s---\n", t->name, hc->name,
                from != log ? "...\n" : "", from);
    }
    free(log);
    tot->hs_refused += (unsigned)c.hs_refused;
    tot->closed += (unsigned)c.closed;
    tot->either += (unsigned)c.either;
    int ok = c.fail[0] == '\0';
    if (verbose)
        fprintf(stderr, "hostile: %s/%s took %.2f s (case %.2f s, settling %.2f s%s%s%s%s)\n",
                t->name, hc->name, (double)(du_now_ns() - t0) / 1e9, (double)(t1 - t0) / 1e9,
                (double)(du_now_ns() - t1) / 1e9, good_ok ? "" : ", good client stalled",
                stats_ok ? "" : ", counters", missing[0] ? ", log: " : "", missing);
    if (!ok) {
        printf("case %s: FAILED: %s\n", hc->name, c.fail);
    } else {
        tot->survived++;
        const char *r = shown_reason(&c, any_seen);
        if (c.outcome[0] == '\0')
            snprintf(c.outcome, sizeof(c.outcome), "%s", c.open_ok ? "open" : "closed");
        if (r != NULL)
            printf("case %s: survived, %s (reason seen: %s)%s%s\n", hc->name, c.outcome, r,
                   c.note[0] ? "; " : "", c.note);
        else
            printf("case %s: survived, %s%s%s\n", hc->name, c.outcome, c.note[0] ? "; " : "",
                   c.note);
    }
    fflush(stdout);
    return ok;
}

/* Sums "protocol errors N, failed handshakes M" of every echo_server exit line. */
static void echo_exit_counters(const char *log, unsigned long *proto, unsigned long *hs, int *lines)
{
    *proto = *hs = 0;
    *lines = 0;
    for (const char *p = log; (p = strstr(p, "echo_server: sessions ")) != NULL; p++) {
        const char *q = strstr(p, "protocol errors ");
        unsigned long a, b;
        if (q != NULL && sscanf(q, "protocol errors %lu, failed handshakes %lu", &a, &b) == 2) {
            *proto += a;
            *hs += b;
            (*lines)++;
        }
    }
}

/* The last case of a target: every session let go, counters add up, a
 * clean exit on SIGTERM, no sanitizer report. Stops the target. */
static int final_case(struct target *t, const int fd_base[2], struct totals *tot)
{
    struct case_ctx c;
    memset(&c, 0, sizeof(c));
    tot->cases++;
    char why[300], note[300] = "";
    if (!target_alive(t, why, sizeof(why)))
        case_fail(&c, "%s", why);
    /* fds back to what the target had before any client came */
    int fds[2] = {-1, -1};
    uint64_t dl = du_deadline(H_SETTLE_MS);
    for (;;) {
        int back = 1;
        for (int i = 0; i < t->npids; i++) {
            fds[i] = target_fd_count(t, i);
            back &= fds[i] >= 0 && fds[i] <= fd_base[i] + FD_SLACK;
        }
        if (back || du_now_ns() >= dl)
            break;
        du_sleep_ms(50);
    }
    for (int i = 0; i < t->npids; i++) {
        size_t n = strlen(note);
        snprintf(note + n, sizeof(note) - n, "%sfds %d -> %d, RssAnon %ld KiB", i ? "; " : "",
                 fd_base[i], fds[i], target_rss_anon_kib(t, i));
        if (fds[i] < 0 || fds[i] > fd_base[i] + FD_SLACK)
            case_fail(&c, "process %d holds %d fds after every session closed (%d before)", i,
                      fds[i], fd_base[i]);
    }
    struct svc_counters sc;
    if (t->kind == T_SHMIPCD && !t->died) {
        if (target_stats(t, &sc) < 0)
            case_fail(&c, "shmipcctl stats failed");
        else if (sc.hs_failed < tot->hs_refused)
            case_fail(&c, "handshakes failed %lu, the cases caused %u", sc.hs_failed,
                      tot->hs_refused);
        else if (sc.opened != sc.closed)
            case_fail(&c, "sessions opened %lu but closed %lu with every client gone", sc.opened,
                      sc.closed);
    }
    int codes[2];
    target_stop(t, codes);
    for (int i = 0; i < 2 && i < (t->kind == T_SHMIPCD ? 1 : 2); i++)
        if (codes[i] != 0)
            case_fail(&c, "%s process %d exited with %d on SIGTERM", t->name, i, codes[i]);
    char *log = target_log_since(t, 0);
    const char *san = du_sanitizer_report(log);
    if (san != NULL)
        case_fail(&c, "%s report in %s", san, t->log);
    if (t->kind == T_ECHO) {
        unsigned long proto, hs;
        int lines;
        echo_exit_counters(log, &proto, &hs, &lines);
        size_t n = strlen(note);
        snprintf(note + n, sizeof(note) - n,
                 "; exit counters: protocol errors %lu, failed "
                 "handshakes %lu",
                 proto, hs);
        if (lines != 2)
            case_fail(&c, "echo_server printed %d of 2 exit lines", lines);
        else if (hs < tot->hs_refused)
            case_fail(&c, "echo_server counted %lu failed handshakes, the cases caused %u", hs,
                      tot->hs_refused);
        else if (proto < tot->closed)
            case_fail(&c, "echo_server counted %lu protocol errors, the cases caused %u", proto,
                      tot->closed);
        else if (proto + hs < tot->closed + tot->hs_refused + tot->either)
            case_fail(&c,
                      "echo_server counted %lu protocol errors and failed handshakes, the "
                      "cases caused %u",
                      proto + hs, tot->closed + tot->hs_refused + tot->either);
    }
    free(log);
    int ok = c.fail[0] == '\0';
    if (ok) {
        tot->survived++;
        printf("case clean_shutdown: survived, exit 0 (%s)\n", note);
    } else {
        printf("case clean_shutdown: FAILED: %s (%s)\n", c.fail, note);
    }
    fflush(stdout);
    return ok;
}

static void run_target(enum target_kind kind, const char *only, struct totals *all)
{
    struct target t;
    struct totals tot = {0};
    char err[512];
    uint64_t t0 = du_now_ns();
    cur_target = &t;
    printf("== target %s\n", kind == T_SHMIPCD ? "shmipcd" : "echo_server");
    fflush(stdout);
    if (target_start(&t, kind, err, sizeof(err)) < 0) {
        printf("case start: FAILED: %s\n", err);
        char *log = target_log_since(&t, 0);
        fprintf(stderr, "--- %s\n%s---\n", t.log, log);
        free(log);
        all->cases++;
        int codes[2];
        target_stop(&t, codes);
        if (!keep)
            target_remove_dir(&t);
        cur_target = NULL;
        return;
    }
    int fd_base[2] = {target_fd_count(&t, 0), t.npids > 1 ? target_fd_count(&t, 1) : -1};
    struct good_shared *gs =
        mmap(NULL, sizeof(*gs), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    pid_t good = gs == MAP_FAILED ? -1 : good_start(&t, gs);
    cur_good = good;
    int good_up = 0;
    uint64_t dl = du_deadline(H_GOOD_MS);
    while (good > 0 && du_now_ns() < dl) {
        if (__atomic_load_n(&gs->requests, __ATOMIC_RELAXED) >= GOOD_PROGRESS) {
            good_up = 1;
            break;
        }
        du_sleep_ms(20);
    }
    if (!good_up) {
        printf("case good_client_start: FAILED: the good client did not get going (%s)\n",
               gs != MAP_FAILED && gs->last_error[0] ? gs->last_error : "no answers");
        tot.cases++;
    } else {
        for (unsigned i = 0; i < h_ncases; i++)
            if (name_selected(only, h_cases[i].name))
                run_case(&t, &h_cases[i], gs, &tot);
    }
    int gexit = good_stop(good, gs);
    cur_good = 0;
    uint64_t gerr = gs != MAP_FAILED ? gs->errors : 1;
    if (gexit != 0)
        printf("hostile: the good client exited with %d\n", gexit);
    printf("hostile: %s: good client answered %llu requests (%llu MiB), errors %llu\n", t.name,
           gs != MAP_FAILED ? (unsigned long long)gs->requests : 0ull,
           gs != MAP_FAILED ? (unsigned long long)(gs->bytes >> 20) : 0ull,
           (unsigned long long)gerr);
    if (gexit != 0 && gerr == 0)
        gerr = 1;
    final_case(&t, fd_base, &tot);
    if (gs != MAP_FAILED)
        munmap(gs, sizeof(*gs));
    if (keep)
        printf("hostile: %s: kept %s\n", t.name, t.dir);
    else
        target_remove_dir(&t);
    cur_target = NULL;
    h_cleanup_shm();
    printf("hostile: %s: %u cases, %u survived, %.1f s\n", t.name, tot.cases, tot.survived,
           (double)(du_now_ns() - t0) / 1e9);
    fflush(stdout);
    all->cases += tot.cases;
    all->survived += tot.survived;
    all->good_errors += gerr;
}

static void usage(void)
{
    fprintf(stderr, "usage: shmipc-hostile [--target shmipcd|echo_server|both] [--bin DIR] "
                    "[--plugins DIR] [--case NAME[,NAME...]] [--list] [--verbose] [--keep]\n");
}

int main(int argc, char **argv)
{
    const char *target = "both", *only = NULL;
    snprintf(h_bin_dir, sizeof(h_bin_dir), "%s", du_exe_dir());
    snprintf(h_plugin_dir, sizeof(h_plugin_dir), "%s/../plugins", du_exe_dir());
    static const struct option opts[] = {
        {"target", required_argument, NULL, 't'},
        {"bin", required_argument, NULL, 'b'},
        {"plugins", required_argument, NULL, 'p'},
        {"case", required_argument, NULL, 'c'},
        {"list", no_argument, NULL, 'l'},
        {"help", no_argument, NULL, 'h'},
        {"verbose", no_argument, NULL, 'v'},
        {"keep", no_argument, NULL, 'k'},
        {NULL, 0, NULL, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 't':
            target = optarg;
            break;
        case 'b':
            snprintf(h_bin_dir, sizeof(h_bin_dir), "%s", optarg);
            break;
        case 'p':
            snprintf(h_plugin_dir, sizeof(h_plugin_dir), "%s", optarg);
            break;
        case 'c':
            only = optarg;
            break;
        case 'v':
            verbose = 1;
            break;
        case 'k':
            keep = 1;
            break;
        case 'l':
            for (unsigned i = 0; i < h_ncases; i++)
                printf("%s\n", h_cases[i].name);
            return 0;
        default:
            usage();
            return o == 'h' ? 0 : 2;
        }
    }
    /* Absolute: shmipcd resolves plugin paths against its config's directory. */
    char abs[PATH_MAX];
    if (realpath(h_bin_dir, abs) != NULL)
        snprintf(h_bin_dir, sizeof(h_bin_dir), "%s", abs);
    if (realpath(h_plugin_dir, abs) != NULL)
        snprintf(h_plugin_dir, sizeof(h_plugin_dir), "%s", abs);
    int do_d = strcmp(target, "shmipcd") == 0 || strcmp(target, "both") == 0;
    int do_e = strcmp(target, "echo_server") == 0 || strcmp(target, "both") == 0;
    if (optind != argc || (!do_d && !do_e)) {
        usage();
        return 2;
    }
    if (only != NULL) {
        for (const char *p = only; *p != '\0';) {
            size_t k = strcspn(p, ",");
            int found = 0;
            for (unsigned i = 0; i < h_ncases; i++)
                found |= strlen(h_cases[i].name) == k && strncmp(h_cases[i].name, p, k) == 0;
            if (!found) {
                fprintf(stderr, "shmipc-hostile: no case '%.*s' (--list names them)\n", (int)k, p);
                return 2;
            }
            p += k;
            if (*p == ',')
                p++;
        }
    }
    (void)h_shm_prefix(); /* fixed before any fork */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, emergency);
    signal(SIGTERM, emergency);
    signal(SIGHUP, emergency);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct totals all = {0};
    uint64_t t0 = du_now_ns();
    if (do_d)
        run_target(T_SHMIPCD, only, &all);
    if (do_e)
        run_target(T_ECHO, only, &all);
    h_cleanup_shm();
    printf("hostile: run time %.1f s\n", (double)(du_now_ns() - t0) / 1e9);
    printf("hostile: cases=%u survived=%u good_client_errors=%llu\n", all.cases, all.survived,
           (unsigned long long)all.good_errors);
    return all.cases == all.survived && all.good_errors == 0 ? 0 : 1;
}

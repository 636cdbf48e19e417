/*
 * shmipc-upgrade-soak [SECONDS]: shmipcd upgraded in place again and
 * again (`shmipcctl upgrade`, alternating between two copies of the
 * binary, as a package upgrade would swap them) under load, without a
 * failed request.
 *
 * shmipcd serves echo_t (plugins/echo, thread mode) and echo_p
 * (plugins/echo, process mode). Four clients (tests/common/load_fixture):
 * threaded in memfd mode on echo_t, threaded in file mode on echo_p,
 * event-loop in file mode on echo_t, event-loop in memfd mode on echo_p;
 * every answer is checked byte for byte. In a loop until the time is up:
 * an upgrade (the old daemon must be gone, and every client must have
 * been answered again, before the next step); every third step a reload
 * of the configuration first; every fifth an upgrade that must be
 * refused (a configuration with a syntax error: the command exits 1, the
 * same daemon serves on), then the good configuration again.
 *
 * Checked at the end: at least 20 upgrades in a run of 30 s or more (3 in
 * a shorter one) and at least one refused; no request failed, none lost
 * (timed out), no connect refused; every old daemon gone; the last one
 * exits on SIGTERM, no sanitizer report in the log; nothing of the run
 * left in /dev/shm (this run's prefix) or in /tmp (the private directories
 * of every daemon). The last line on stdout:
 *   upgrade-soak: upgrades=U refused=B requests=N failed=0 lost=0
 *   refused_connects=0 old_processes_left=0 shm_left=0
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "../common/load_fixture.h"
#include "base/log.h"
#include "shmipc/shmipc.h"

#define NLOADS 4
#define START_MS 15000
#define STOP_MS 15000
#define GONE_MS 15000    /* an old daemon to exit after its hand-over */
#define PROGRESS_MS 15000 /* every client to be answered again */
#define PROGRESS 20      /* answers per client between two steps */
#define CMD_MS 60000
#define MAX_PIDS 4096

static int failures;
static volatile sig_atomic_t interrupted;

#define fail(...) du_fail("upgrade-soak", &failures, __VA_ARGS__)

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* The library's warnings go to stderr; its info lines (one per hot
 * restart and client) are dropped. */
static void client_log(void *arg, enum log_level level, const char *line)
{
    (void)arg;
    if (level <= LOG_WARN)
        fprintf(stderr, "%s\n", line);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipc-upgrade-soak [SECONDS]   (default 30, at least 5)\n"
               "Upgrades shmipcd in place again and again under load from threaded and\n"
               "event-loop clients in both handshake modes; every request must succeed.\n");
}

static int write_conf(struct du_daemon *d, const char *echo, int broken)
{
    struct du_conf t = {.n = 0};
    if (broken) {
        du_conf_add(&t, "services = ( { name = \"echo_t\" ;\n");
        return du_conf_write(&t, d, "soak.conf") < 0 ? -1 : 0;
    }
    du_conf_head(&t, d, "drain_timeout_ms = 10000;");
    du_conf_service(&t, d, 1, "echo_t", echo, NULL);
    du_conf_add(&t,
                ",  { name = \"echo_p\"; listen = \"%s\"; plugin = \"%s\"; isolation = \"process\"; "
                "}\n",
                du_addr(d, "echo_p"), echo);
    return du_conf_write(&t, d, "soak.conf");
}

/* shmipcctl -s ADMIN args...: exit code, output in out. */
static int ctl(const struct du_daemon *d, char *out, size_t cap, const char *a1, const char *a2,
               const char *a3)
{
    const char *argv[] = {du_bin_path("shmipcctl"), "-s", d->admin, a1, a2, a3, NULL};
    static const struct du_spawn_opts opts = {.no_fork = 1};
    return du_run_capture(argv, out, cap, CMD_MS, &opts);
}

static void loads_counts(struct load *ls, unsigned long *since)
{
    load_counts(ls, NLOADS, since);
}

int main(int argc, char **argv)
{
    unsigned secs = 30;
    int done = du_soak_seconds(argc, argv, usage, &secs);
    if (done >= 0)
        return done;
    unsigned min_upgrades = secs >= 30 ? 20 : 3;
    char echo[4200];
    snprintf(echo, sizeof(echo), "%s/../plugins/echo.so", du_exe_dir());
    const char *need[] = {du_bin_path("shmipcd"), du_bin_path("shmipcctl"), echo};
    if (du_soak_prepare("upgrade-soak", need, 3, on_signal) != 0)
        return 2;
    log_set_sink(client_log, NULL);

    struct du_daemon d;
    struct load ls[NLOADS] = {
        {.mode = SHMIPC_MODE_MEMFD, .threads = 2},
        {.mode = SHMIPC_MODE_FILE, .threads = 2},
        {.mode = SHMIPC_MODE_FILE, .event_loop = 1, .threads = 1, .inflight = 4},
        {.mode = SHMIPC_MODE_MEMFD, .event_loop = 1, .threads = 1, .inflight = 4},
    };
    char prefix[NLOADS][96], shm_name[64], other[256], out[8192];
    snprintf(shm_name, sizeof(shm_name), "shmipc-upgsoak-%d-", (int)getpid());
    unsigned started = 0, upgrades = 0, refused = 0, reloads = 0;
    int old_left = 0, shm_left = 0;
    pid_t pids[MAX_PIDS];
    int npids = 0;
    unsigned long since[NLOADS] = {0};
    int rc = du_init(&d, "/tmp/shmipc-upgsoak-XXXXXX");
    if (rc < 0) {
        fail("mkdtemp: %s", strerror(-rc));
        goto out;
    }
    if (write_conf(&d, echo, 0) < 0) {
        fail("writing %s", d.conf);
        goto out;
    }
    d.spawn.no_fork = 1;
    if ((rc = du_start(&d, START_MS)) != 0) {
        fail(rc > 0 ? "shmipcd exited at start with %d" : "shmipcd did not start (%d)", rc);
        goto out;
    }
    pids[npids++] = d.pid;
    snprintf(other, sizeof(other), "%s/shmipcd-b", d.dir);
    if (du_copy_file(du_bin_path("shmipcd"), other) < 0 || chmod(other, 0755) < 0) {
        fail("copying shmipcd to %s", other);
        goto out;
    }
    for (; started < NLOADS; started++) {
        snprintf(prefix[started], sizeof(prefix[started]), "/dev/shm/%s%u", shm_name, started);
        ls[started].address = du_addr(&d, started % 2 ? "echo_p" : "echo_t");
        ls[started].path_prefix = prefix[started];
        ls[started].index = started;
        ls[started].timeout_ms = 10000;
        if ((rc = load_start(&ls[started])) < 0) {
            fail("client %u: %s", started, shmipc_strerror(rc));
            goto out;
        }
    }
    if (load_progress(ls, NLOADS, since, PROGRESS, PROGRESS_MS) < 0) {
        fail("the clients were not answered at the start");
        goto out;
    }
    uint64_t end = du_now_ns() + (uint64_t)secs * 1000000000u;
    for (unsigned step = 1; du_now_ns() < end && !interrupted && failures == 0; step++) {
        if (step % 3 == 0) {
            if (ctl(&d, out, sizeof(out), "reload", NULL, NULL) != 0)
                fail("reload: %s", out);
            reloads++;
        }
        if (step % 5 == 0) {
            if (write_conf(&d, echo, 1) < 0) {
                fail("writing a broken %s", d.conf);
                break;
            }
            rc = ctl(&d, out, sizeof(out), "upgrade", NULL, NULL);
            if (rc != 1 || strstr(out, "error: upgrade refused: ") == NULL)
                fail("an upgrade with a broken configuration: exit %d: %s", rc, out);
            else
                refused++;
            if (write_conf(&d, echo, 0) < 0) {
                fail("writing %s", d.conf);
                break;
            }
        }
        pid_t old = d.pid;
        rc = ctl(&d, out, sizeof(out), "upgrade", "--binary",
                 step % 2 ? other : du_bin_path("shmipcd"));
        long next = -1;
        const char *p = strstr(out, "upgrade: pid ");
        if (rc != 0 || p == NULL || sscanf(p, "upgrade: pid %ld", &next) != 1 || next <= 0) {
            fail("upgrade %u: exit %d: %s", upgrades + 1, rc, out);
            break;
        }
        if (d.pid_is_child ? du_reap(old, GONE_MS) != 0 : du_wait_gone(old, GONE_MS) < 0) {
            fail("upgrade %u: the old daemon %d did not exit (cleanly) in %d ms", upgrades + 1,
                 (int)old, GONE_MS);
            break;
        }
        d.pid = (pid_t)next;
        d.pid_is_child = 0;
        d.last_pid = (pid_t)next;
        if (npids < MAX_PIDS)
            pids[npids++] = (pid_t)next;
        upgrades++;
        loads_counts(ls, since);
        if (load_progress(ls, NLOADS, since, PROGRESS, PROGRESS_MS) < 0)
            fail("upgrade %u: the clients were not answered again", upgrades);
    }
out:
    for (unsigned i = 0; i < started; i++)
        load_stop(&ls[i]);
    unsigned long requests = 0, failed = 0, lost = 0, refused_connects = 0;
    for (unsigned i = 0; i < started; i++) {
        requests += ls[i].ok;
        lost += ls[i].lost;
        refused_connects += ls[i].refused;
        failed += ls[i].failed - ls[i].lost - ls[i].refused;
        if (ls[i].failed > 0)
            fail("client %u: %lu failed, the first: %s", i, ls[i].failed, ls[i].why);
    }
    if (d.pid > 0 && du_stop(&d, SIGTERM, STOP_MS) != 0)
        fail("shmipcd %d did not stop cleanly", (int)d.last_pid);
    for (int i = 0; i < npids; i++) {
        if (!du_gone(pids[i])) {
            old_left++;
            kill(pids[i], SIGKILL);
        }
        if (du_daemon_tmpdirs(pids[i], 1) > 0) {
            fail("private directories of shmipcd %d were left in /tmp", (int)pids[i]);
            old_left++;
        }
    }
    if (d.dir[0] != '\0') {
        const char *san = du_log_check(&d, failures > 0);
        if (san != NULL)
            fail("a sanitizer report in shmipcd's log");
    }
    shm_left = du_count_prefix("/dev/shm", shm_name);
    if (shm_left > 0) {
        du_show_prefix("/dev/shm", shm_name);
        du_remove_prefix("/dev/shm", shm_name);
        fail("%d files of this run left in /dev/shm", shm_left);
    }
    if (d.dir[0] != '\0')
        du_remove_dir(d.dir);
    if (!interrupted && upgrades < min_upgrades)
        fail("%u upgrades, fewer than %u", upgrades, min_upgrades);
    if (!interrupted && refused < 1)
        fail("no refused upgrade");
    if (old_left > 0)
        fail("%d old daemons (or their directories) left", old_left);
    printf("upgrade-soak: reloads=%u seconds=%u\n", reloads, secs);
    printf("upgrade-soak: upgrades=%u refused=%u requests=%lu failed=%lu lost=%lu "
           "refused_connects=%lu old_processes_left=%d shm_left=%d\n",
           upgrades, refused, requests, failed, lost, refused_connects, old_left, shm_left);
    return failures == 0 && !interrupted ? 0 : 1;
}

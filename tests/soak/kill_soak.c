/*
 * shmipc-kill-soak: peers that die with SIGKILL.
 *
 * Part 1: a busy client (memfd mode, several streams) is killed with
 * SIGKILL at a random point, N times (default 100), while a second client
 * keeps working. shmipcd must keep serving, and once every dead session is
 * gone its fd count, shared mappings and RSS must be back near the
 * baseline, with nothing of ours left in /dev/shm.
 *
 * Part 2: shmipcd itself is killed with SIGKILL under load, K times
 * (default 3). Clients waiting for answers must get an error within a
 * bounded time, and reconnect once a new shmipcd listens on the address.
 *
 * Every client of the run names its pool and queues after one prefix with
 * this program's pid, /dev/shm/shmipc-killsoak-<pid>_<client pid>_...
 * (memfd names: the clients use memfd mode, so normally no file at all);
 * the leftover check counts that prefix only, so files of other programs
 * (a Go shmipc client's /dev/shm/shmipc_<pid>_buffer) do not count, and
 * names what it finds.
 *
 * Last line: kill-soak: client_kills=N server_kills=K fd_growth=F
 *   maps_growth=M rss_growth_kib=R worst_error_ms=E reconnects=C failed=X
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/daemon_util.h"
#include "shmipc/shmipc.h"

#define DEADLINE_MS 20000

static struct du_daemon dmn; /* shmipcd: binary beside this program */
static char addr[200];       /* its echo service */
static char shm_path[96];    /* the clients' path_prefix: /dev/shm/<shm_name> */
static char shm_name[80];    /* "shmipc-killsoak-<our pid>": this run's names */

static uint64_t now_ms(void)
{
    return du_now_ns() / 1000000u;
}

/* Starts shmipcd (again): its pid once it answers, or -1. */
static pid_t start_daemon(void)
{
    unlink(dmn.admin_path); /* left by a shmipcd killed with SIGKILL */
    if (du_start(&dmn, DEADLINE_MS) == 0)
        return dmn.pid;
    du_stop(&dmn, SIGKILL, DEADLINE_MS);
    return -1;
}

/* Runs shmipcctl; its output in out. Exit status or -1. */
static int ctl(const char *cmd, char *out, size_t cap)
{
    char bin[PATH_MAX + 16];
    snprintf(bin, sizeof(bin), "%s/shmipcctl", du_exe_dir());
    const char *argv[] = {bin, "-s", dmn.admin, cmd, NULL};
    return du_run_capture(argv, out, cap, DEADLINE_MS, NULL);
}

/* A client that keeps 4 streams busy until killed (or for run_ms). */
static int busy_client(int run_ms, int *errors)
{
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = addr;
    cfg.path_prefix = shm_path;
    cfg.pool_bytes = 4u << 20;
    shmipc_client *c;
    if (shmipc_client_open(&cfg, &c) < 0)
        return 1;
    uint8_t buf[8192];
    uint64_t end = now_ms() + (uint64_t)run_ms;
    for (unsigned i = 0; now_ms() < end; i++) {
        shmipc_stream *st;
        shmipc_msg m;
        if (shmipc_client_get(c, &st) < 0) {
            (*errors)++;
            continue;
        }
        size_t n = (i * 977) % sizeof(buf);
        memset(buf, (int)i, n);
        int rc = shmipc_call(st, buf, n, &m, 5000);
        if (rc == 0) {
            *errors += m.len != n;
            shmipc_msg_release(&m);
        } else {
            (*errors)++;
        }
        shmipc_client_put(c, st);
    }
    shmipc_client_close(c);
    return 0;
}

static int write_conf(void)
{
    char plugin[PATH_MAX + 16];
    snprintf(plugin, sizeof(plugin), "%s/../plugins/echo.so", du_exe_dir());
    struct du_conf c = {.n = 0};
    du_conf_add(&c, "workers = 2;\nadmin = \"%s\";\nlog = { level = \"warn\"; };\nservices = (\n",
                dmn.admin);
    du_conf_service(&c, &dmn, 1, "echo", plugin, NULL);
    return du_conf_write(&c, &dmn, "k.conf");
}

/* Sessions still open in shmipcd ("sessions N" in status). */
static int open_sessions(void)
{
    char out[8192];
    if (ctl("status", out, sizeof(out)) != 0)
        return -1;
    const char *p = strstr(out, "service echo:");
    const char *s = p ? strstr(p, "sessions ") : NULL;
    int n = -1;
    if (s == NULL || sscanf(s, "sessions %d", &n) != 1)
        return -1;
    return n;
}

int main(int argc, char **argv)
{
    int client_kills = 100, server_kills = 3, failed = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--client-kills") == 0)
            client_kills = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--server-kills") == 0)
            server_kills = atoi(argv[i + 1]);
    }
    signal(SIGPIPE, SIG_IGN);
    /* A client adds _<its pid>: "<shm_name>_" cannot match another run's
     * names (pid 12 vs 123). */
    snprintf(shm_name, sizeof(shm_name), "shmipc-killsoak-%d", (int)getpid());
    snprintf(shm_path, sizeof(shm_path), "/dev/shm/%s", shm_name);
    if (du_init(&dmn, "/tmp/shmipc-kill-XXXXXX") < 0)
        return 1;
    snprintf(dmn.shmipcd, sizeof(dmn.shmipcd), "%s/shmipcd", du_exe_dir());
    snprintf(addr, sizeof(addr), "%s", du_addr(&dmn, "echo"));
    if (write_conf() < 0)
        return 1;
    pid_t d = start_daemon();
    if (d < 0) {
        fprintf(stderr, "kill-soak: shmipcd did not start (log %s)\n", dmn.log);
        return 1;
    }

    /* Baseline after a warm-up client has come and gone. */
    int errs = 0;
    busy_client(300, &errs);
    uint64_t end = now_ms() + DEADLINE_MS;
    while (open_sessions() != 0 && now_ms() < end)
        du_sleep_ms(20);
    long fd0 = du_count_fds(d), maps0 = du_count_shared_maps(d), rss0 = du_proc_kib(d, "VmRSS");

    /* Part 1: kill busy clients at random points; a steady one watches. */
    int *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint64_t *killed_ms = (uint64_t *)(shared + 4); /* CLOCK_MONOTONIC: one clock for all */
    pid_t steady = fork();
    if (steady == 0) {
        int e = 0;
        busy_client(1000000, &e);
        _exit(0);
    }
    srand(12345);
    for (int k = 0; k < client_kills; k++) {
        pid_t c = fork();
        if (c == 0) {
            int e = 0;
            busy_client(60000, &e);
            _exit(0);
        }
        du_sleep_ms(5 + rand() % 60);
        kill(c, SIGKILL);
        waitpid(c, NULL, 0);
        if (kill(d, 0) != 0) {
            fprintf(stderr, "kill-soak: shmipcd died at client kill %d\n", k);
            failed++;
            break;
        }
        if ((k + 1) % 20 == 0)
            fprintf(stderr, "kill-soak: %d clients killed, shmipcd alive\n", k + 1);
    }
    kill(steady, SIGKILL);
    waitpid(steady, NULL, 0);
    end = now_ms() + DEADLINE_MS;
    while (open_sessions() != 0 && now_ms() < end)
        du_sleep_ms(20);
    /* A fresh client still works after all that. */
    errs = 0;
    busy_client(300, &errs);
    failed += errs != 0;
    end = now_ms() + DEADLINE_MS;
    while (open_sessions() != 0 && now_ms() < end)
        du_sleep_ms(20);
    long fd1 = du_count_fds(d), maps1 = du_count_shared_maps(d), rss1 = du_proc_kib(d, "VmRSS");
    long fd_growth = fd1 - fd0, maps_growth = maps1 - maps0, rss_growth = rss1 - rss0;
    failed += fd_growth > 2 || maps_growth > 2 || rss_growth > 16384 || open_sessions() != 0;
    fprintf(stderr, "kill-soak: shmipcd fds %ld -> %ld, shared maps %ld -> %ld, RSS %ld -> %ld KiB\n",
            fd0, fd1, maps0, maps1, rss0, rss1);

    /* Part 2: kill shmipcd under a waiting client; it must see an error
     * soon, and reconnect when shmipcd is back. */
    uint64_t worst_error_ms = 0;
    int reconnects = 0;
    for (int k = 0; k < server_kills && !failed; k++) {
        int pfd[2];
        if (pipe(pfd) < 0)
            break;
        pid_t c = fork();
        if (c == 0) {
            struct shmipc_client_config cfg;
            shmipc_client_config_init(&cfg);
            cfg.address = addr;
            cfg.path_prefix = shm_path;
            cfg.reconnect_min_ms = 20;
            cfg.reconnect_max_ms = 200;
            shmipc_client *cl;
            if (shmipc_client_open(&cfg, &cl) < 0)
                _exit(2);
            shmipc_stream *st;
            shmipc_msg m;
            if (shmipc_client_get(cl, &st) < 0)
                _exit(3);
            if (write(pfd[1], "r", 1) != 1)
                _exit(4);
            int rc = 0;
            while (rc == 0) { /* keep calling until the server is gone */
                rc = shmipc_call(st, "ping", 4, &m, 30000);
                if (rc == 0)
                    shmipc_msg_release(&m);
            }
            uint64_t killed_at = __atomic_load_n(killed_ms, __ATOMIC_ACQUIRE);
            uint64_t waited = killed_at ? now_ms() - killed_at : 0;
            shmipc_stream_close(st);
            /* Wait for the new server and reconnect through get(). */
            uint64_t until = now_ms() + DEADLINE_MS;
            int ok = 0;
            while (!ok && now_ms() < until) {
                if (shmipc_client_get(cl, &st) == 0) {
                    ok = shmipc_call(st, "back", 4, &m, 5000) == 0;
                    if (ok)
                        shmipc_msg_release(&m);
                    shmipc_stream_close(st);
                }
                if (!ok)
                    du_sleep_ms(20);
            }
            shmipc_client_close(cl);
            shared[1] = (int)waited;
            __atomic_store_n(killed_ms, 0, __ATOMIC_RELEASE);
            _exit(ok ? 0 : 5);
        }
        close(pfd[1]);
        char b;
        if (read(pfd[0], &b, 1) != 1)
            failed++;
        close(pfd[0]);
        du_sleep_ms(50);
        __atomic_store_n(killed_ms, now_ms(), __ATOMIC_RELEASE);
        du_stop(&dmn, SIGKILL, DEADLINE_MS);
        du_daemon_tmpdirs(d, 1); /* its private plugin copies: it had no time */
        d = start_daemon();
        if (d < 0) {
            failed++;
            break;
        }
        int st;
        if (waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
            reconnects++;
            if ((uint64_t)shared[1] > worst_error_ms)
                worst_error_ms = (uint64_t)shared[1];
        } else {
            failed++;
        }
    }
    failed += worst_error_ms > 5000 || reconnects != server_kills;

    du_stop(&dmn, SIGTERM, DEADLINE_MS);
    char ours[96];
    snprintf(ours, sizeof(ours), "%s_", shm_name);
    int left = du_count_prefix("/dev/shm", ours);
    if (left != 0) {
        fprintf(stderr, "kill-soak: %d files of this run left in /dev/shm:\n", left);
        du_show_prefix("/dev/shm", ours);
        du_remove_prefix("/dev/shm", ours);
        failed++;
    }
    if (du_remove_dir(dmn.dir) != 0)
        failed++;
    printf("kill-soak: client_kills=%d server_kills=%d fd_growth=%ld maps_growth=%ld "
           "rss_growth_kib=%ld worst_error_ms=%lu reconnects=%d shm_left=%d failed=%d\n",
           client_kills, server_kills, fd_growth, maps_growth, rss_growth,
           (unsigned long)worst_error_ms, reconnects, left, failed);
    return failed ? 1 : 0;
}

/*
 * The servers under attack: shmipcd with a generated configuration (an
 * echo service on a unix socket and one on TCP loopback, an admin socket,
 * small limits), or two echo_server processes (unix and TCP). Each runs in
 * its own temp dir with its output in one log file; every wait has a
 * deadline and a stop always ends in SIGKILL if SIGTERM was not enough.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hostile.h"
#include "proto/sock.h"

#define SHMIPCD_MAX_EVENT (1u << 20)
#define SHMIPCD_MAX_STREAMS 256
#define SHMIPCD_HS_MS 300
#define SHMIPCD_MAX_SESSIONS 64
/* Long enough that a busy peer stalled by a loaded machine (ASan, a
 * flooding good client, 2 CPUs) is not taken for an idle one. */
#define SHMIPCD_IDLE_MS 5000
#define ECHO_MAX_EVENT (32u << 20) /* the library server's defaults */
#define ECHO_MAX_STREAMS 65536
#define ECHO_HS_MS 1000

char h_bin_dir[4096];
char h_plugin_dir[4096];

const char *h_shm_prefix(void)
{
    static char b[64];
    if (b[0] == '\0')
        snprintf(b, sizeof(b), "shmipc-hostile-%d", (int)getpid());
    return b;
}

void h_cleanup_shm(void)
{
    du_remove_prefix("/dev/shm", h_shm_prefix());
}

/* A TCP port that was free a moment ago. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Target processes never outlive the driver. A small quarantine keeps an
 * ASan target's RSS meaningful; the caller's own ASAN_OPTIONS still win. */
static const struct du_spawn_opts target_opts = {
    .die_with_parent = 1,
    .asan_defaults = "quarantine_size_mb=16:detect_leaks=1",
};
static const struct du_spawn_opts capture_opts = {.die_with_parent = 1};

/* Starts argv with its output appended to log. */
static pid_t spawn(const char *log, const char *const *argv)
{
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    pid_t pid = du_spawn(argv, fd, &target_opts);
    close(fd);
    return pid;
}

static int can_connect(const char *addr)
{
    struct sock_addr a;
    if (sock_addr_parse(addr, &a) < 0)
        return 0;
    int fd = sock_connect(&a, sock_deadline(200));
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

/* Waits until every process answers (shmipcd: its admin socket, which it
 * opens after every listener; echo_server: both listeners). */
static int wait_ready(struct target *t, char *err, size_t errlen)
{
    uint64_t dl = du_deadline(H_START_MS);
    while (du_now_ns() < dl) {
        char why[200];
        if (!target_alive(t, why, sizeof(why))) {
            snprintf(err, errlen, "%s", why);
            return -1;
        }
        int ready;
        if (t->kind == T_SHMIPCD) {
            struct svc_counters c;
            ready = target_stats(t, &c) == 0;
        } else {
            ready = can_connect(t->unix_addr) && can_connect(t->tcp_addr);
        }
        if (ready)
            return 0;
        du_sleep_ms(20);
    }
    snprintf(err, errlen, "%s did not answer within %d ms (log %s)", t->name, H_START_MS, t->log);
    return -1;
}

static int start_shmipcd(struct target *t, char *err, size_t errlen)
{
    char conf[16384], path[256], plugin[4200];
    snprintf(plugin, sizeof(plugin), "%s/echo.so", h_plugin_dir);
    if (access(plugin, R_OK) != 0) {
        snprintf(err, errlen, "plugin %s: %s (use --plugins DIR)", plugin, strerror(errno));
        return -1;
    }
    t->max_event = SHMIPCD_MAX_EVENT;
    t->max_streams = SHMIPCD_MAX_STREAMS;
    t->hs_timeout_ms = SHMIPCD_HS_MS;
    t->max_sessions = SHMIPCD_MAX_SESSIONS;
    t->idle_timeout_ms = SHMIPCD_IDLE_MS;
    snprintf(conf, sizeof(conf),
             "workers = 2;\n"
             "log = { level = \"info\"; };\n"
             "admin = \"%s\";\n"
             "limits = { max_streams = %u; handshake_timeout_ms = %d; max_event_bytes = %u;\n"
             "           max_sessions = %u; idle_timeout_ms = %d;\n"
             "           max_pool_bytes = 67108864; drain_timeout_ms = 2000; };\n"
             "services = (\n"
             "  { name = \"echo\"; listen = \"%s\"; allowed_dir = \"/dev/shm\";\n"
             "    plugin = \"%s\"; },\n"
             "  { name = \"echotcp\"; listen = \"%s\"; allowed_dir = \"/dev/shm\";\n"
             "    plugin = \"%s\"; }\n"
             ");\n",
             t->admin, t->max_streams, t->hs_timeout_ms, t->max_event, t->max_sessions,
             t->idle_timeout_ms, t->unix_addr, plugin, t->tcp_addr, plugin);
    snprintf(path, sizeof(path), "%s/shmipcd.conf", t->dir);
    if (du_write_file(path, conf) < 0) {
        snprintf(err, errlen, "writing %s: %s", path, strerror(errno));
        return -1;
    }
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/shmipcd", h_bin_dir);
    const char *argv[] = {bin, "-c", path, NULL};
    t->pids[0] = spawn(t->log, argv);
    t->npids = t->pids[0] > 0 ? 1 : 0;
    if (t->npids == 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    return wait_ready(t, err, errlen);
}

static int start_echo(struct target *t, char *err, size_t errlen)
{
    t->max_event = ECHO_MAX_EVENT;
    t->max_streams = ECHO_MAX_STREAMS;
    t->hs_timeout_ms = ECHO_HS_MS;
    t->max_sessions = 1024;
    t->idle_timeout_ms = 0;
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/echo_server", h_bin_dir);
    const char *a0[] = {bin, t->unix_addr, NULL};
    const char *a1[] = {bin, t->tcp_addr, NULL};
    t->pids[0] = spawn(t->log, a0);
    if (t->pids[0] <= 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    t->npids = 1;
    t->pids[1] = spawn(t->log, a1);
    if (t->pids[1] <= 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    t->npids = 2;
    return wait_ready(t, err, errlen);
}

/* 1 if /proc/<pid>/maps names `what` (a runtime library). */
static int maps_mention(pid_t pid, const char *what)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    int found = 0;
    while (f != NULL && !found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, what) != NULL;
    if (f != NULL)
        fclose(f);
    return found;
}

int target_start(struct target *t, enum target_kind kind, char *err, size_t errlen)
{
    memset(t, 0, sizeof(*t));
    t->kind = kind;
    t->name = kind == T_SHMIPCD ? "shmipcd" : "echo_server";
    snprintf(t->dir, sizeof(t->dir), "/tmp/shmipc-hostile-XXXXXX");
    if (mkdtemp(t->dir) == NULL) {
        snprintf(err, errlen, "mkdtemp: %s", strerror(errno));
        t->dir[0] = '\0';
        return -1;
    }
    snprintf(t->log, sizeof(t->log), "%s/%s.log", t->dir, t->name);
    snprintf(t->unix_addr, sizeof(t->unix_addr), "unix:%s/echo.sock", t->dir);
    snprintf(t->admin, sizeof(t->admin), "unix:%s/admin.sock", t->dir);
    int port = free_port();
    if (port <= 0) {
        snprintf(err, errlen, "no free TCP port");
        return -1;
    }
    snprintf(t->tcp_addr, sizeof(t->tcp_addr), "tcp:127.0.0.1:%d", port);
    char bin[4200];
    snprintf(bin, sizeof(bin), "%s/%s", h_bin_dir, t->name);
    if (access(bin, X_OK) != 0) {
        snprintf(err, errlen, "%s: %s (use --bin DIR)", bin, strerror(errno));
        return -1;
    }
    int rc = kind == T_SHMIPCD ? start_shmipcd(t, err, errlen) : start_echo(t, err, errlen);
    /* Both servers: out_limit = 2 * max_event + 1 MiB (master.c, server.c). */
    t->out_limit = (size_t)t->max_event * 2 + (1u << 20);
    t->asan = rc == 0 && maps_mention(t->pids[0], "libasan");
    t->tsan = rc == 0 && maps_mention(t->pids[0], "libtsan");
    return rc;
}

void target_remove_dir(struct target *t)
{
    if (t->dir[0] != '\0')
        du_remove_dir(t->dir);
    t->dir[0] = '\0';
}

void target_stop(struct target *t, int exit_codes[2])
{
    for (int i = 0; i < 2; i++)
        exit_codes[i] = -1;
    for (int i = 0; i < t->npids; i++)
        if (t->pids[i] > 0)
            kill(t->pids[i], SIGTERM);
    uint64_t dl = du_deadline(H_STOP_MS);
    for (int i = 0; i < t->npids; i++) {
        if (t->pids[i] <= 0)
            continue;
        /* -1: killed at the deadline (du_reap says so) */
        exit_codes[i] = du_reap(t->pids[i], du_left_ms(dl));
        if (t->kind == T_SHMIPCD)
            du_daemon_tmpdirs(t->pids[i], 1); /* a killed one leaves its plugin copies */
        t->pids[i] = 0;
    }
    t->npids = 0;
}

int target_alive(struct target *t, char *why, size_t whylen)
{
    if (t->died) {
        snprintf(why, whylen, "%s", t->death);
        return 0;
    }
    for (int i = 0; i < t->npids; i++) {
        if (t->pids[i] <= 0) {
            snprintf(why, whylen, "%s process %d is gone", t->name, i);
            t->died = 1;
            snprintf(t->death, sizeof(t->death), "%s", why);
            return 0;
        }
        int status;
        pid_t r = waitpid(t->pids[i], &status, WNOHANG);
        if (r == t->pids[i]) {
            if (WIFSIGNALED(status))
                snprintf(why, whylen, "%s pid %d died of signal %d", t->name, (int)t->pids[i],
                         WTERMSIG(status));
            else
                snprintf(why, whylen, "%s pid %d exited with %d", t->name, (int)t->pids[i],
                         WEXITSTATUS(status));
            t->pids[i] = 0;
            t->died = 1;
            snprintf(t->death, sizeof(t->death), "%s", why);
            return 0;
        }
        if (kill(t->pids[i], 0) < 0) {
            snprintf(why, whylen, "%s pid %d: %s", t->name, (int)t->pids[i], strerror(errno));
            t->died = 1;
            snprintf(t->death, sizeof(t->death), "%s", why);
            return 0;
        }
    }
    return 1;
}

int target_stats(const struct target *t, struct svc_counters *out)
{
    memset(out, 0, sizeof(*out));
    if (t->kind != T_SHMIPCD)
        return -1;
    char bin[4200], reply[65536];
    snprintf(bin, sizeof(bin), "%s/shmipcctl", h_bin_dir);
    const char *argv[] = {bin, "-s", t->admin, "stats", NULL};
    if (du_run_capture(argv, reply, sizeof(reply), 5000, &capture_opts) != 0)
        return -1;
    int services = 0;
    for (char *line = reply; line != NULL && *line != '\0';) {
        char *nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        unsigned long v[9];
        char name[64];
        if (sscanf(line,
                   "service %63[^:]: requests %lu, bytes in %lu out %lu, handler errors %lu, "
                   "sessions opened %lu closed %lu, handshakes failed %lu, refused %lu, "
                   "idle closed %lu",
                   name, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) == 10) {
            out->requests += v[0];
            out->opened += v[4];
            out->closed += v[5];
            out->hs_failed += v[6];
            out->refused += v[7];
            out->idle_closed += v[8];
            services++;
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    return services == 2 ? 0 : -1;
}

long target_log_size(const struct target *t)
{
    struct stat st;
    return stat(t->log, &st) == 0 ? (long)st.st_size : 0;
}

char *target_log_since(const struct target *t, long from)
{
    size_t n;
    char *b = du_read_file(t->log, &n);
    if (b == NULL)
        return strdup("");
    if (from > 0) {
        size_t skip = (size_t)from < n ? (size_t)from : n;
        memmove(b, b + skip, n - skip + 1);
    }
    return b;
}

long target_rss_anon_kib(const struct target *t, int i)
{
    if (i >= t->npids || t->pids[i] <= 0)
        return -1;
    return du_proc_kib(t->pids[i], "RssAnon");
}

int target_fd_count(const struct target *t, int i)
{
    if (i >= t->npids || t->pids[i] <= 0)
        return -1;
    return du_count_fds(t->pids[i]);
}

/*
 * Helpers for the programs that test the real shmipcd (see daemon_util.h).
 * Nothing here asserts: the unit suites judge with CUnit, the soak
 * programs and shmipc-hostile with their own failure counts.
 */
#include "daemon_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- time ---- */

uint64_t du_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t du_deadline(int ms)
{
    return du_now_ns() + (uint64_t)ms * 1000000u;
}

int du_past(uint64_t deadline_ns)
{
    return du_now_ns() >= deadline_ns;
}

int du_left_ms(uint64_t deadline_ns)
{
    uint64_t now = du_now_ns();
    return now >= deadline_ns ? 0 : (int)((deadline_ns - now) / 1000000u);
}

void du_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- where things are ---- */

const char *du_exe_dir(void)
{
    static char dir[4096];
    if (dir[0] == '\0') {
        ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
        dir[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(dir, '/');
        if (slash != NULL)
            *slash = '\0';
        else
            snprintf(dir, sizeof(dir), ".");
    }
    return dir;
}

/* "<$env or du_exe_dir()/rel>/<name><suffix>" into b. */
static const char *locate(char *b, size_t cap, const char *env, const char *rel, const char *name,
                          const char *suffix)
{
    const char *e = getenv(env);
    if (e != NULL && *e != '\0')
        snprintf(b, cap, "%s/%s%s", e, name, suffix);
    else
        snprintf(b, cap, "%s/%s/%s%s", du_exe_dir(), rel, name, suffix);
    return b;
}

const char *du_bin_path(const char *name)
{
    static char buf[2][4200];
    static unsigned k;
    return locate(buf[k++ % 2], sizeof(buf[0]), "SHMIPC_BIN", "../bin", name, "");
}

const char *du_plugin_path(const char *name)
{
    static char buf[4][4200];
    static unsigned k;
    return locate(buf[k++ % 4], sizeof(buf[0]), "SHMIPC_PLUGINS", "../plugins", name, ".so");
}

const char *du_test_plugin_path(const char *name)
{
    static char buf[4][4200];
    static unsigned k;
    return locate(buf[k++ % 4], sizeof(buf[0]), "SHMIPC_TEST_PLUGINS", "plugins", name, ".so");
}

/* ---- files and text ---- */

char *du_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t cap = 65536, n = 0, r;
    char *b = malloc(cap);
    while (b != NULL && (r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2) {
            char *nb = realloc(b, cap * 2);
            if (nb == NULL) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (b != NULL)
        b[n] = '\0';
    if (len != NULL)
        *len = b != NULL ? n : 0;
    return b;
}

/* Writes len bytes of `bytes` to <path>.tmp and renames it over path. */
static int replace_file(const char *path, const void *bytes, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    if (fd < 0)
        return -errno;
    int rc = 0;
    for (size_t off = 0; off < len && rc == 0;) {
        ssize_t w = write(fd, (const char *)bytes + off, len - off);
        if (w < 0 && errno != EINTR)
            rc = -errno;
        off += w > 0 ? (size_t)w : 0;
    }
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    return rc;
}

int du_write_file(const char *path, const char *text)
{
    return replace_file(path, text, strlen(text));
}

int du_copy_file(const char *src, const char *dst)
{
    size_t len;
    char *bytes = du_read_file(src, &len);
    if (bytes == NULL)
        return errno != 0 ? -errno : -EIO;
    int rc = replace_file(dst, bytes, len);
    free(bytes);
    return rc;
}

int du_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

int du_count_str(const char *hay, const char *needle)
{
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = hay; p != NULL && len > 0 && (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}

int du_count_lines(const char *text, const char *line)
{
    int n = 0;
    size_t len = strlen(line);
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t l = nl != NULL ? (size_t)(nl - p) : strlen(p);
        n += l == len && memcmp(p, line, len) == 0;
        p = nl != NULL ? nl + 1 : NULL;
    }
    return n;
}

const char *du_sanitizer_report(const char *text)
{
    static const char *const marks[] = {"AddressSanitizer", "LeakSanitizer", "runtime error",
                                        "ThreadSanitizer"};
    for (unsigned i = 0; text != NULL && i < sizeof(marks) / sizeof(marks[0]); i++)
        if (strstr(text, marks[i]) != NULL)
            return marks[i];
    return NULL;
}

/* Calls fn(dir, name, arg) for each entry of dir (not . and ..) whose
 * name starts with prefix; how many there were. */
static int each_entry(const char *dir, const char *prefix,
                      void (*fn)(const char *dir, const char *name, void *arg), void *arg)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    size_t plen = strlen(prefix);
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strncmp(e->d_name, prefix, plen) != 0)
            continue;
        n++;
        if (fn != NULL)
            fn(dir, e->d_name, arg);
    }
    if (d != NULL)
        closedir(d);
    return n;
}

int du_count_prefix(const char *dir, const char *prefix)
{
    return each_entry(dir, prefix, NULL, NULL);
}

static void remove_entry(const char *dir, const char *name, void *arg)
{
    int *removed = arg;
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (unlink(path) == 0 || (errno == EISDIR && rmdir(path) == 0))
        ++*removed;
}

int du_remove_prefix(const char *dir, const char *prefix)
{
    int removed = 0;
    each_entry(dir, prefix, remove_entry, &removed);
    return removed;
}

int du_remove_dir(const char *dir)
{
    du_remove_prefix(dir, "");
    return rmdir(dir) == 0 ? 0 : -errno;
}

static void remove_tmpdir(const char *dir, const char *name, void *arg)
{
    (void)arg;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    du_remove_dir(path);
}

static void show_entry(const char *dir, const char *name, void *arg)
{
    (void)arg;
    fprintf(stderr, "    %s/%s\n", dir, name);
}

int du_show_prefix(const char *dir, const char *prefix)
{
    return each_entry(dir, prefix, show_entry, NULL);
}

/* Names a leftover directory and what it holds, for the failure report. */
static void show_tmpdir(const char *dir, const char *name, void *arg)
{
    (void)arg;
    char path[512];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    fprintf(stderr, "\n  left: %s (modified %ld s ago)\n", path,
            stat(path, &st) == 0 ? (long)(time(NULL) - st.st_mtime) : -1L);
    each_entry(path, "", show_entry, NULL);
}

int du_daemon_tmpdirs(pid_t pid, int remove)
{
    char want[64];
    snprintf(want, sizeof(want), "shmipcd-%d-", (int)pid);
    return each_entry("/tmp", want, remove ? remove_tmpdir : show_tmpdir, NULL);
}

/* ---- processes ---- */

int du_count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

int du_count_shared_maps(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    int n = 0;
    char line[512], perms[8];
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "%*s %7s", perms) == 1 && perms[3] == 's')
            n++;
        /* the rest of a long line is not a mapping of its own */
        while (strchr(line, '\n') == NULL && fgets(line, sizeof(line), f) != NULL)
            ;
    }
    fclose(f);
    return n;
}

long du_status_kib(const char *status, const char *key)
{
    char k[64];
    snprintf(k, sizeof(k), "\n%s:", key);
    const char *p = status != NULL ? strstr(status, k) : NULL;
    return p != NULL ? strtol(p + strlen(k), NULL, 10) : -1;
}

long du_proc_kib(pid_t pid, const char *key)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    char *s = du_read_file(path, NULL);
    long kib = du_status_kib(s, key);
    free(s);
    return kib;
}

void du_close_fds_except(const int *keep, int nkeep)
{
    int fds[512], n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL && n < 512) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name), kept = fd <= 2 || fd == dirfd(d);
        for (int i = 0; i < nkeep; i++)
            kept |= keep[i] == fd;
        if (!kept)
            fds[n++] = fd;
    }
    if (d != NULL)
        closedir(d);
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static pid_t spawn_nofork(const char *const *argv, int out_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    return rc == 0 ? pid : -1;
}

/* The forked child: never returns. */
static void exec_child(const char *const *argv, int out_fd, const struct du_spawn_opts *o)
{
    if (o->die_with_parent)
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (o->alarm_s > 0)
        alarm(o->alarm_s); /* a child that hangs dies even if the parent is gone */
    int keep[1] = {out_fd};
    du_close_fds_except(keep, 1);
    int null = open("/dev/null", O_RDONLY);
    if (null > 0) {
        dup2(null, 0);
        close(null);
    }
    if (dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
        _exit(126);
    if (out_fd > 2)
        close(out_fd);
    if (o->asan_defaults != NULL) {
        const char *mine = getenv("ASAN_OPTIONS");
        char opts[1024];
        snprintf(opts, sizeof(opts), "%s%s%s", o->asan_defaults, mine != NULL && *mine ? ":" : "",
                 mine != NULL ? mine : "");
        setenv("ASAN_OPTIONS", opts, 1);
    }
    execv(argv[0], (char *const *)argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

pid_t du_spawn(const char *const *argv, int out_fd, const struct du_spawn_opts *opts)
{
    static const struct du_spawn_opts none = {0};
    const struct du_spawn_opts *o = opts != NULL ? opts : &none;
    if (o->no_fork)
        return o->die_with_parent || o->alarm_s || o->asan_defaults ? -1
                                                                    : spawn_nofork(argv, out_fd);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        exec_child(argv, out_fd, o);
    return pid;
}

int du_soak_seconds(int argc, char **argv, void (*usage)(FILE *f), unsigned *secs)
{
    if (argc > 2 || (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0))) {
        usage(argc > 2 ? stderr : stdout);
        return argc > 2 ? 2 : 0;
    }
    if (argc == 2) {
        char *e;
        unsigned long v = strtoul(argv[1], &e, 10);
        if (*argv[1] == '\0' || *e != '\0' || v < 5 || v > 86400) {
            usage(stderr);
            return 2;
        }
        *secs = (unsigned)v;
    }
    return -1;
}

int du_soak_prepare(const char *who, const char *const *need, unsigned n, void (*on_signal)(int))
{
    for (unsigned i = 0; i < n; i++) {
        if (access(need[i], R_OK) < 0) {
            fprintf(stderr, "%s: %s: %s\n", who, need[i], strerror(errno));
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return 0;
}

int du_gone(pid_t pid)
{
    if (kill(pid, 0) < 0 && errno == ESRCH)
        return 1;
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the state follows the name */
    return p != NULL && (p[2] == 'Z' || p[2] == 'X');
}

int du_wait_gone(pid_t pid, int timeout_ms)
{
    uint64_t dl = du_deadline(timeout_ms);
    while (!du_gone(pid)) {
        if (du_past(dl))
            return -1;
        du_sleep_ms(5);
    }
    return 0;
}

int du_reap(pid_t pid, int timeout_ms)
{
    uint64_t dl = du_deadline(timeout_ms);
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0)
            return -1;
        if (du_past(dl)) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "\n  child %d killed after %d ms deadline\n", (int)pid, timeout_ms);
            return -1;
        }
        du_sleep_ms(2);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int du_run_capture(const char *const *argv, char *out, size_t cap, int timeout_ms,
                   const struct du_spawn_opts *opts)
{
    int p[2];
    out[0] = '\0';
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = du_spawn(argv, p[1], opts);
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        return -1;
    }
    uint64_t dl = du_deadline(timeout_ms);
    size_t n = 0;
    char sink[4096];
    int ended = 0; /* its output closed */
    for (;;) {
        int left = du_left_ms(dl);
        struct pollfd pfd = {p[0], POLLIN, 0};
        int pr = left > 0 ? poll(&pfd, 1, left) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        ssize_t r = n + 1 < cap ? read(p[0], out + n, cap - 1 - n) : read(p[0], sink, sizeof(sink));
        if (r <= 0) {
            ended = r == 0;
            break;
        }
        if (n + 1 < cap)
            n += (size_t)r;
    }
    out[n] = '\0';
    close(p[0]);
    /* Its output ended: it is exiting (a sanitizer's report comes before
     * that) and gets what is left of the deadline and a second. Else it
     * outlived the deadline and is killed at once. */
    if (!ended)
        fprintf(stderr, "\n  %s still running after %d ms\n", argv[0], timeout_ms);
    return du_reap(pid, ended ? du_left_ms(dl) + 1000 : 1);
}

/* ---- sockets ---- */

int du_connect(const char *addr)
{
    const char *path = strncmp(addr, "unix:", 5) == 0 ? addr + 5 : addr;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int du_admin(const char *addr, const char *cmd, char *out, size_t cap, int timeout_ms)
{
    out[0] = '\0';
    int fd = du_connect(addr);
    if (fd < 0)
        return fd;
    char line[64];
    int len = snprintf(line, sizeof(line), "%s\n", cmd);
    if (write(fd, line, (size_t)len) != len) {
        close(fd);
        return -EIO;
    }
    uint64_t dl = du_deadline(timeout_ms);
    size_t n = 0;
    while (n + 1 < cap && !du_past(dl)) {
        struct pollfd pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        ssize_t r = read(fd, out + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    out[n] = '\0';
    close(fd);
    return (int)n;
}

/* ---- a shmipcd of a test ---- */

int du_init(struct du_daemon *d, const char *dir_template)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->dir, sizeof(d->dir), "%s", dir_template);
    if (mkdtemp(d->dir) == NULL) {
        d->dir[0] = '\0';
        return -errno;
    }
    snprintf(d->conf, sizeof(d->conf), "%s/shmipcd.conf", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/shmipcd.log", d->dir);
    snprintf(d->admin_path, sizeof(d->admin_path), "%s/admin.sock", d->dir);
    snprintf(d->admin, sizeof(d->admin), "unix:%s", d->admin_path);
    snprintf(d->shmipcd, sizeof(d->shmipcd), "%s", du_bin_path("shmipcd"));
    return 0;
}

const char *du_path(const struct du_daemon *d, const char *name)
{
    static char buf[8][384];
    static unsigned k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof(buf[0]), "%s/%s", d->dir, name);
    return b;
}

const char *du_addr(const struct du_daemon *d, const char *svc)
{
    static char buf[8][200];
    static unsigned k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof(buf[0]), "unix:%s/%s.sock", d->dir, svc);
    return b;
}

int du_start(struct du_daemon *d, int timeout_ms)
{
    int log = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log < 0)
        return -1;
    const char *argv[] = {d->shmipcd, "-c", d->conf, NULL};
    d->pid = du_spawn(argv, log, &d->spawn);
    close(log);
    if (d->pid < 0) {
        d->pid = 0;
        return -1;
    }
    d->last_pid = d->pid;
    d->pid_is_child = 1;
    uint64_t dl = du_deadline(timeout_ms);
    char reply[512];
    while (!du_past(dl)) {
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return rc != 0 ? rc : -1;
        }
        if (du_admin(d->admin, "status", reply, sizeof(reply), du_left_ms(dl)) > 0 &&
            strncmp(reply, "shmipcd pid", 11) == 0)
            return 0;
        du_sleep_ms(10);
    }
    fprintf(stderr, "\n  shmipcd did not answer on %s within %d ms\n", d->admin, timeout_ms);
    return -1;
}

int du_stop(struct du_daemon *d, int sig, int timeout_ms)
{
    if (d->pid <= 0)
        return 0;
    kill(d->pid, sig);
    if (!d->pid_is_child) { /* an upgrade's successor: not ours to reap */
        int rc = du_wait_gone(d->pid, timeout_ms);
        if (rc < 0) {
            kill(d->pid, SIGKILL);
            fprintf(stderr, "\n  shmipcd %d killed after %d ms deadline\n", (int)d->pid,
                    timeout_ms);
        }
        d->pid = 0;
        return rc;
    }
    int rc = du_reap(d->pid, timeout_ms);
    d->pid = 0;
    return rc;
}

int du_wait_exit(struct du_daemon *d, int timeout_ms)
{
    if (d->pid <= 0)
        return -1;
    int rc = du_reap(d->pid, timeout_ms);
    d->pid = 0;
    return rc;
}

const char *du_log_check(const struct du_daemon *d, int show)
{
    char *log = du_read_file(d->log, NULL);
    const char *san = du_sanitizer_report(log);
    if (san != NULL || show) {
        size_t n = log != NULL ? strlen(log) : 0;
        fprintf(stderr, "\n  ---- shmipcd log %s%s (last part) ----\n%s\n  ---- end of log ----\n",
                d->log, san != NULL ? ", with a sanitizer report" : "",
                n > 8000      ? log + n - 8000
                : log != NULL ? log
                              : "");
    }
    free(log);
    return san;
}

void du_conf_add(struct du_conf *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(c->b + c->n, sizeof(c->b) - c->n, fmt, ap);
    va_end(ap);
    if (r > 0)
        c->n = c->n + (size_t)r < sizeof(c->b) ? c->n + (size_t)r : sizeof(c->b) - 1;
}

void du_conf_head(struct du_conf *c, const struct du_daemon *d, const char *limits)
{
    du_conf_add(c, "workers = 2;\nlog = { level = \"info\"; };\nadmin = \"%s\";\n", d->admin);
    if (limits != NULL)
        du_conf_add(c, "limits = { %s };\n", limits);
    du_conf_add(c, "services = (\n");
}

void du_service_entry(char *b, size_t cap, const struct du_daemon *d, const char *name,
                      const char *plugin, const char *config)
{
    snprintf(b, cap, "  { name = \"%s\"; listen = \"%s\"; plugin = \"%s\"; config = { %s }; }",
             name, du_addr(d, name), plugin, config != NULL ? config : "");
}

void du_conf_service(struct du_conf *c, const struct du_daemon *d, int first, const char *name,
                     const char *plugin, const char *config)
{
    char entry[2048];
    du_service_entry(entry, sizeof(entry), d, name, plugin, config);
    du_conf_add(c, "%s%s\n", first ? "" : ",", entry);
}

int du_conf_write(struct du_conf *c, struct du_daemon *d, const char *file)
{
    du_conf_add(c, ");\n");
    /* Not through du_path: a caller may still hold its buffers. */
    snprintf(d->conf, sizeof(d->conf), "%s/%s", d->dir, file);
    return du_write_file(d->conf, c->b);
}

void du_fail(const char *who, int *failures, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: FAIL: ", who);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    (*failures)++;
}

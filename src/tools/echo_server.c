/*
 * echo_server [options] ADDR: answers every message with the same bytes
 * on the same stream, for any number of sessions and streams, until
 * SIGTERM/SIGINT; then closes every session and exits 0. Prints its
 * counters at exit.
 *
 * SIGUSR2 upgrades it in place, as nginx does: it starts its own binary
 * again on the same listening socket (fd 3 of the successor), waits until
 * the successor serves, then hands every client over with the protocol's
 * hot restart (shmipc_server_hot_restart) and exits once they all moved.
 * A successor that does not come up is reported and the old one serves
 * on. The server runs on a thread of its own; the main thread waits for
 * the signals.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmipc/shmipc.h"

extern char **environ;

#define READY_MS 5000 /* a successor to open its server */

static shmipc_server *server;
static unsigned long answer_errors; /* logged: the first few, then only counted */

static void on_message(shmipc_stream *st, shmipc_msg *m, void *arg)
{
    (void)arg;
    /* The request's slices go back as the answer: nothing is copied. */
    int rc = shmipc_stream_forward(st, m);
    /* A full queue is retried by the server loop; anything else ends the
     * stream's usefulness and is the session's business. */
    if (rc < 0 && rc != SHMIPC_EQFULL && ++answer_errors <= 10)
        fprintf(stderr, "echo_server: stream %u: %s%s\n", shmipc_stream_id(st),
                shmipc_strerror(rc), answer_errors == 10 ? " (further errors only counted)" : "");
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: echo_server [--drain-ms N] ADDR   (unix:/path, /path or tcp:host:port)\n"
            "Answers every message with its own bytes on the same stream until\n"
            "SIGTERM or SIGINT, then prints its counters on stderr. SIGUSR2 starts a\n"
            "new echo_server on the same socket and hands every client over to it\n"
            "(hot restart); clients that do not ack within --drain-ms (default 30000)\n"
            "are closed.\n"
            "  -h, --help   this text;  --version  the version\n");
}

struct opts {
    const char *address;
    int listen_fd, ready_fd, drain_ms;
};

static int parse(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){NULL, -1, -1, 30000};
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        int *num = strcmp(argv[i], "--drain-ms") == 0    ? &o->drain_ms
                   : strcmp(argv[i], "--listen-fd") == 0 ? &o->listen_fd
                   : strcmp(argv[i], "--ready-fd") == 0  ? &o->ready_fd
                                                         : NULL;
        if (num != NULL && i + 1 < argc) {
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 0 || v > 1000000000)
                return -1;
            *num = (int)v;
        } else if (argv[i][0] != '-' && o->address == NULL) {
            o->address = argv[i];
        } else {
            return -1;
        }
    }
    return o->address != NULL ? 0 : -1;
}

static void *serve(void *arg)
{
    (void)arg;
    int rc = shmipc_server_run(server);
    if (rc < 0)
        fprintf(stderr, "echo_server: %s\n", shmipc_strerror(rc));
    return NULL;
}

/* Starts the successor on our listening socket and waits until it says it
 * serves. Its pid, or -1 with why on stderr (it is reaped then). */
static pid_t start_successor(const struct opts *o)
{
    int lfd = shmipc_server_listen_fd(server), pv[2];
    if (lfd < 0 || pipe2(pv, O_CLOEXEC) < 0) {
        fprintf(stderr, "echo_server: upgrade refused: %s\n", strerror(lfd < 0 ? -lfd : errno));
        return -1;
    }
    char drain[16];
    snprintf(drain, sizeof(drain), "%d", o->drain_ms);
    char *argv[] = {"echo_server", "--listen-fd", "3", "--ready-fd", "4", "--drain-ms", drain,
                    (char *)o->address, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, lfd, 3); /* dup2 clears close-on-exec */
    posix_spawn_file_actions_adddup2(&fa, pv[1], 4);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(pv[1]);
    if (rc != 0) {
        close(pv[0]);
        fprintf(stderr, "echo_server: upgrade refused: starting the successor: %s\n",
                strerror(rc));
        return -1;
    }
    struct pollfd p = {pv[0], POLLIN, 0};
    char c = 0;
    int ok = poll(&p, 1, READY_MS) == 1 && read(pv[0], &c, 1) == 1 && c == 'R';
    close(pv[0]);
    if (!ok) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fprintf(stderr, "echo_server: upgrade refused: successor %d did not come up\n", (int)pid);
        return -1;
    }
    return pid;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf("echo_server (shmipc) %s\n", SHMIPC_VERSION);
        return 0;
    }
    struct opts o;
    if (parse(argc, argv, &o) < 0) {
        usage(stderr);
        return 2;
    }
    /* Every thread blocks the signals; the main thread takes them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    cfg.address = o.address;
    cfg.listen_fd = o.listen_fd;
    struct shmipc_server_handlers h = {.on_message = on_message};
    int rc = shmipc_server_open(&cfg, &h, NULL, &server);
    if (rc < 0) {
        fprintf(stderr, "echo_server: %s: %s\n", o.address, shmipc_strerror(rc));
        return 1;
    }
    pthread_t th;
    if ((rc = pthread_create(&th, NULL, serve, NULL)) != 0) {
        fprintf(stderr, "echo_server: %s\n", strerror(rc));
        shmipc_server_close(server);
        return 1;
    }
    fprintf(stderr, "echo_server %d: serving %s\n", (int)getpid(), o.address);
    if (o.ready_fd >= 0) {
        if (write(o.ready_fd, "R", 1) != 1)
            fprintf(stderr, "echo_server: telling the predecessor: %s\n", strerror(errno));
        close(o.ready_fd);
    }
    for (;;) {
        int sig;
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig != SIGUSR2) {
            shmipc_server_stop(server);
            break;
        }
        pid_t next = start_successor(&o);
        if (next < 0)
            continue; /* we serve on */
        fprintf(stderr, "echo_server %d: hot restart to %d\n", (int)getpid(), (int)next);
        shmipc_server_hot_restart(server, (uint64_t)next, o.drain_ms);
        break;
    }
    pthread_join(th, NULL);
    struct shmipc_stats st;
    shmipc_server_stats(server, &st);
    shmipc_server_close(server);
    fprintf(stderr,
            "echo_server: sessions %lu, messages in %lu out %lu, wake-ups in %lu out %lu, "
            "fallbacks in %lu, protocol errors %lu, failed handshakes %lu, answer errors %lu\n",
            (unsigned long)st.sessions_opened,
            (unsigned long)st.messages_received, (unsigned long)st.messages_sent,
            (unsigned long)st.wakeups_received, (unsigned long)st.wakeups_sent,
            (unsigned long)st.fallbacks_received, (unsigned long)st.protocol_errors,
            (unsigned long)st.handshakes_failed, answer_errors);
    return 0;
}

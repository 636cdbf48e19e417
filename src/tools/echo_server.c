/*
 * echo_server ADDR: answers every message with the same bytes on the same
 * stream, for any number of sessions and streams, until SIGTERM/SIGINT;
 * then closes every session and exits 0. Prints its counters at exit.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "shmipc/shmipc.h"

static shmipc_server *server;
static unsigned long answer_errors; /* logged: the first few, then only counted */

static void on_signal(int sig)
{
    (void)sig;
    shmipc_server_stop(server);
}

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
    fprintf(f, "usage: echo_server ADDR   (unix:/path, /path or tcp:host:port)\n"
               "Answers every message with its own bytes on the same stream until\n"
               "SIGTERM or SIGINT, then prints its counters on stderr.\n"
               "  -h, --help   this text;  --version  the version\n");
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
    if (argc != 2 || argv[1][0] == '-') {
        usage(stderr);
        return 2;
    }
    struct shmipc_server_config cfg;
    shmipc_server_config_init(&cfg);
    cfg.address = argv[1];
    struct shmipc_server_handlers h = {.on_message = on_message};
    int rc = shmipc_server_open(&cfg, &h, NULL, &server);
    if (rc < 0) {
        fprintf(stderr, "echo_server: %s: %s\n", argv[1], shmipc_strerror(rc));
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = shmipc_server_run(server);
    struct shmipc_stats st;
    shmipc_server_stats(server, &st);
    shmipc_server_close(server);
    fprintf(stderr,
            "echo_server: sessions %lu, messages in %lu out %lu, wake-ups in %lu out %lu, "
            "fallbacks in %lu, protocol errors %lu, failed handshakes %lu, answer errors %lu\n",
            (unsigned long)st.sessions_opened, (unsigned long)st.messages_received,
            (unsigned long)st.messages_sent, (unsigned long)st.wakeups_received,
            (unsigned long)st.wakeups_sent, (unsigned long)st.fallbacks_received,
            (unsigned long)st.protocol_errors, (unsigned long)st.handshakes_failed,
            answer_errors);
    return rc < 0 ? 1 : 0;
}

/*
 * systemd's readiness protocol (Type=notify): a datagram to the unix
 * socket NOTIFY_SOCKET names ('@' first: the abstract namespace). Without
 * NOTIFY_SOCKET nothing is sent. No library needed.
 */
#ifndef SHMIPC_SERVER_NOTIFY_H
#define SHMIPC_SERVER_NOTIFY_H

/* Sends the text (e.g. "READY=1\nSTATUS=..."); 0, or a negative code
 * (logged once at debug level: a missing systemd is no error). */
int sd_notify_text(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif

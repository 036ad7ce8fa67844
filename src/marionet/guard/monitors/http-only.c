/* http-only in C: TCP to port 80 only; on each socket the first data sent
 * must start with an HTTP method and the first data received with "HTTP/".
 * Per-socket state: a fixed table of MAX_SOCKS entries, freed on nclose.
 * Same behaviour as http-only.wat. */
#include "marionet_monitor.h"

#define MAX_SOCKS 64
enum { IN_USE = 1, SENT = 2, RECEIVED = 4 };

static struct { mn_u32 sock, flags; } socks[MAX_SOCKS];

static mn_u32 *slot(mn_u32 sock, int create) {
    int free = -1;
    for (int i = 0; i < MAX_SOCKS; i++) {
        if (socks[i].flags & IN_USE) {
            if (socks[i].sock == sock) return &socks[i].flags;
        } else if (free < 0) {
            free = i;
        }
    }
    if (!create || free < 0) return 0;
    socks[free].sock = sock;
    socks[free].flags = IN_USE;
    return &socks[free].flags;
}

static const char *const methods[] = {
    "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ",
};

static int is_request(const struct mn_event *e) {
    for (unsigned i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (mn_starts_with(e, methods[i])) return 1;
    return 0;
}

static int mn_event(unsigned index, const struct mn_event *e) {
    (void)index;
    mn_u32 *st;
    switch (e->op) {
    case MN_NOPEN:
        if (e->proto == MN_TCP && e->dport == 80) return 0;
        mn_reason("only TCP to port 80");
        return 1;
    case MN_NSEND:
        if (e->proto != MN_TCP || (e->dport != 0 && e->dport != 80)) {
            mn_reason("only TCP to port 80");
            return 1;
        }
        if (e->data_len == 0) return 0;
        if (!(st = slot(e->sock, 1))) { mn_reason("too many sockets for http-only (64)"); return 4; }
        if (*st & SENT) return 0;
        if (!is_request(e)) { mn_reason("sent data is not an HTTP request"); return 2; }
        *st |= SENT;
        return 0;
    case MN_NDATA:
        if (e->data_len == 0) return 0;
        if (!(st = slot(e->sock, 1))) { mn_reason("too many sockets for http-only (64)"); return 4; }
        if (*st & RECEIVED) return 0;
        if (!mn_starts_with(e, "HTTP/")) { mn_reason("received data is not an HTTP response"); return 3; }
        *st |= RECEIVED;
        return 0;
    case MN_NCLOSE:
        if ((st = slot(e->sock, 0))) *st = 0;
        return 0;
    default:
        return 0;
    }
}

MN_MONITOR_PER_EVENT

/* tcp-only in C: nopen only for TCP sockets (tcp, tcp-listen), nsend only
 * on TCP sockets; everything else is allowed. Same behaviour as tcp-only.wat. */
#include "marionet_monitor.h"

static int mn_event(unsigned index, const struct mn_event *e) {
    (void)index;
    if (e->op == MN_NOPEN && e->proto != MN_TCP && e->proto != MN_TCP_LISTEN) {
        mn_reason("only TCP sockets may be opened");
        return 1;
    }
    if (e->op == MN_NSEND && e->proto != MN_TCP) {
        mn_reason("sends only on TCP sockets");
        return 2;
    }
    return 0;
}

MN_MONITOR_PER_EVENT

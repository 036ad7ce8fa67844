/* icmp-budget in C: at most ICMP_BUDGET (default 10) ICMP/ICMPv6 sends on
 * raw sockets per session; the counter is a global, so it is instance state
 * that persists across calls. Build with -DICMP_BUDGET=N for another budget
 * (python -m marionet.guard.monitors.build icmp-budget.c -D ICMP_BUDGET=100). */
#include "marionet_monitor.h"

#ifndef ICMP_BUDGET
#define ICMP_BUDGET 10
#endif
#define STR_(x) #x
#define STR(x) STR_(x)

static mn_u32 icmp_sent;

static int mn_event(unsigned index, const struct mn_event *e) {
    (void)index;
    if (e->op != MN_NSEND || e->proto != MN_RAW || (e->ipproto != 1 && e->ipproto != 58))
        return 0;
    if (icmp_sent >= ICMP_BUDGET) {
        mn_reason("ICMP budget of " STR(ICMP_BUDGET) " sends used up");
        return 1;
    }
    icmp_sent++;
    return 0;
}

MN_MONITOR_PER_EVENT

/* dst-allow-list in C: TCP only, and only to listed destinations (PAM'25
 * Appendix B: TCP only to a list of web servers). nopen must be proto tcp
 * with a listed dst, nsend must be on tcp to a listed dst; other operations
 * are allowed.
 *
 * The list comes from allow_list.h (or the header named by
 * -DMN_ALLOW_LIST_HEADER='"path"'): MN_ALLOW (sorted 16-byte addresses,
 * IPv4 as ::ffff:a.b.c.d) and MN_ALLOW_COUNT. The shipped header lists three
 * documentation addresses; build your own with
 *   python -m marionet.guard.monitors.build dst-allow-list.c \
 *       --allow-list servers.txt -o web-servers.wasm
 * which generates allow_list.h from one address per line. Lookup is a binary
 * search, so a list of thousands costs ~log2(n) comparisons per event. */
#include "marionet_monitor.h"
#ifdef MN_ALLOW_LIST_HEADER
#include MN_ALLOW_LIST_HEADER
#else
#include "allow_list.h"
#endif

static int listed(const mn_u8 *a) {
    unsigned lo = 0, hi = MN_ALLOW_COUNT;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        int c = mn_memcmp(MN_ALLOW[mid], a, 16);
        if (c == 0) return 1;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return 0;
}

static int mn_event(unsigned index, const struct mn_event *e) {
    (void)index;
    if (e->op != MN_NOPEN && e->op != MN_NSEND) return 0;
    if (e->proto != MN_TCP) {
        mn_reason("only TCP to listed destinations");
        return 1;
    }
    if (!(e->flags & MN_F_DST) || !listed(e->dst)) {
        mn_reason("destination not in the allow list");
        return 2;
    }
    return 0;
}

MN_MONITOR_PER_EVENT

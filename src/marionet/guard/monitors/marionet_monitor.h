/* marionet monitor ABI v1 for C (docs/monitors.md).
 *
 * Freestanding: no libc, no imports. Build with
 *   python -m marionet.guard.monitors.build my-monitor.c -o my-monitor.wasm
 * which runs clang --target=wasm32 -O2 -nostdlib -mbulk-memory
 * -Wl,--no-entry.
 *
 * Either define   static int mn_event(unsigned index, const struct mn_event *e)
 * (return 0 to allow, a code 1..255 to deny; call mn_reason() first) and
 * write  MN_MONITOR_PER_EVENT  once, or define mn_check yourself with
 * MN_EXPORT("mn_check") and return MN_DENY(index, code) / 0.
 */
#ifndef MARIONET_MONITOR_H
#define MARIONET_MONITOR_H

typedef unsigned char mn_u8;
typedef unsigned short mn_u16;
typedef unsigned int mn_u32;

#define MN_ABI_VERSION 1

/* Operation codes (marionet.guard.events.OPS) */
enum { MN_NOPEN = 1, MN_NSEND = 2, MN_NCAP = 3, MN_NCLOSE = 4, MN_NCTL = 5,
       MN_TASK = 6, MN_ACCEPT = 7, MN_NDATA = 8 };
/* Socket kinds (marionet.guard.events.PROTOS) */
enum { MN_PROTO_NONE = 0, MN_UDP = 1, MN_TCP = 2, MN_TCP_LISTEN = 3, MN_RAW = 4 };
/* flags */
enum { MN_F_DST = 1, MN_F_SRC = 2, MN_F_TRUNCATED = 4 };

/* One event: 128 bytes, little-endian, 8-byte aligned in the input area. */
struct mn_event {
    mn_u8 op, proto, family, flags;
    mn_u16 ipproto, dport, sport, _r0;
    mn_u32 sock;
    mn_u8 dst[16];          /* IPv6, or IPv4 as ::ffff:a.b.c.d */
    mn_u8 src[16];
    mn_u32 data_len;        /* full payload length */
    mn_u32 data_ptr;        /* address of the copied payload (0 if none) */
    mn_u32 data_copied;     /* bytes copied: min(data_len, 256) */
    mn_u32 _r1;
    char primitive[16];     /* zero-padded, truncated */
    char principal[32];     /* zero-padded, truncated */
    mn_u8 _r2[16];
};
typedef char mn_event_size_check[sizeof(struct mn_event) == 128 ? 1 : -1];

#define MN_EXPORT(name) __attribute__((export_name(name), visibility("default")))
#define MN_DENY(index, code) ((int)((((mn_u32)(index) + 1u) << 8) | ((mn_u32)(code) & 0xffu)))

#ifndef MN_INPUT_SIZE
#define MN_INPUT_SIZE (128 * 1024)  /* 256 records with 256-byte payloads fit */
#endif

static struct mn_event mn_input[MN_INPUT_SIZE / sizeof(struct mn_event)]
    __attribute__((aligned(8)));
static char mn_reason_buf[128];

MN_EXPORT("mn_abi_version") int mn_abi_version(void) { return MN_ABI_VERSION; }
MN_EXPORT("mn_input_ptr") int mn_input_ptr(void) { return (int)(unsigned long)mn_input; }
MN_EXPORT("mn_input_size") int mn_input_size(void) { return (int)sizeof mn_input; }
MN_EXPORT("mn_reason_ptr") int mn_reason_ptr(void) { return (int)(unsigned long)mn_reason_buf; }

/* Set the denial's reason text (truncated to 127 bytes). */
static inline void mn_reason(const char *s) {
    unsigned i = 0;
    for (; s[i] && i < sizeof mn_reason_buf - 1; i++) mn_reason_buf[i] = s[i];
    mn_reason_buf[i] = 0;
}

static inline int mn_memeq(const void *a, const void *b, unsigned n) {
    const mn_u8 *x = (const mn_u8 *)a, *y = (const mn_u8 *)b;
    for (unsigned i = 0; i < n; i++) if (x[i] != y[i]) return 0;
    return 1;
}

static inline int mn_memcmp(const void *a, const void *b, unsigned n) {
    const mn_u8 *x = (const mn_u8 *)a, *y = (const mn_u8 *)b;
    for (unsigned i = 0; i < n; i++) if (x[i] != y[i]) return (int)x[i] - (int)y[i];
    return 0;
}

/* The copied payload of an event (data_copied bytes). */
static inline const mn_u8 *mn_data(const struct mn_event *e) {
    return (const mn_u8 *)(unsigned long)e->data_ptr;
}

/* Does the copied payload start with the NUL-terminated prefix p? */
static inline int mn_starts_with(const struct mn_event *e, const char *p) {
    unsigned n = 0;
    while (p[n]) n++;
    return e->data_copied >= n && mn_memeq(mn_data(e), p, n);
}

#define MN_MONITOR_PER_EVENT                                                  \
    MN_EXPORT("mn_check") int mn_check(int ptr, int count) {                  \
        const struct mn_event *ev = (const struct mn_event *)(unsigned long)ptr; \
        for (unsigned i = 0; i < (unsigned)count; i++) {                      \
            int code = mn_event(i, &ev[i]);                                   \
            if (code) return MN_DENY(i, code);                                \
        }                                                                     \
        return 0;                                                             \
    }

#endif

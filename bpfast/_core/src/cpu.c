/* Feature detection and the BPFAST_DISABLE_CPU_FEATURES override (see cpu.h). */
#include <stdlib.h>
#include <string.h>
#include "cpu.h"

unsigned bpfast_cpu_features = 0;

static const struct {
    const char *name;
    unsigned bit;
    unsigned needs;  /* features this one is built on: disabling them disables it */
} bpfast_cpu_table[] = {
    /* the AVX2 copy is compiled for both at once, so neither is used without the other */
    {"avx2", BPFAST_CPU_AVX2, BPFAST_CPU_FMA},
    {"fma", BPFAST_CPU_FMA, BPFAST_CPU_AVX2},
    {"avx512f", BPFAST_CPU_AVX512F, BPFAST_CPU_AVX2 | BPFAST_CPU_FMA},
    {"neon", BPFAST_CPU_NEON, 0},
};

#define BPFAST_CPU_COUNT ((int)(sizeof bpfast_cpu_table / sizeof bpfast_cpu_table[0]))

const char *bpfast_cpu_feature_name(int index)
{
    return index >= 0 && index < BPFAST_CPU_COUNT ? bpfast_cpu_table[index].name : NULL;
}

const char *bpfast_cpu_known_names(void)
{
    return "avx2, fma, avx512f, neon";
}

/* __builtin_cpu_supports reads the cpuid data libgcc keeps; unlike target_clones it
 * needs no IFUNC relocation (which musl's loader does not support). */
static unsigned bpfast_cpu_detect(void)
{
    unsigned found = 0;
#if BPFAST_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2"))
        found |= BPFAST_CPU_AVX2;
    if (__builtin_cpu_supports("fma"))
        found |= BPFAST_CPU_FMA;
    if (__builtin_cpu_supports("avx512f"))
        found |= BPFAST_CPU_AVX512F;
#elif defined(__aarch64__) || defined(_M_ARM64)
    found |= BPFAST_CPU_NEON;  /* part of the AArch64 baseline */
#endif
    return found;
}

/* The bits of the names in `list` that name features; the others appended to `unknown`
 * (capacity `room`, comma-separated). */
static unsigned bpfast_cpu_parse(const char *list, char *unknown, size_t room)
{
    unsigned bits = 0;
    const char *p = list;
    while (*p != '\0') {
        const char *end = p;
        size_t len, i;
        int k, found = 0;
        while (*end != '\0' && *end != ',')
            end++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        len = (size_t)(end - p);
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        for (k = 0; k < BPFAST_CPU_COUNT && len > 0; k++) {
            const char *name = bpfast_cpu_table[k].name;
            if (strlen(name) != len)
                continue;
            for (i = 0; i < len && (p[i] | 0x20) == name[i]; i++)
                ;
            if (i == len) {
                bits |= bpfast_cpu_table[k].bit;
                found = 1;
            }
        }
        if (!found && len > 0 && strlen(unknown) + len + 3 < room) {
            if (unknown[0] != '\0')
                strcat(unknown, ", ");
            strncat(unknown, p, len);
        }
        p = *end == ',' ? end + 1 : end;
    }
    return bits;
}

const char *bpfast_cpu_init(void)
{
    static char unknown[256];
    static int done = 0;
    const char *list;
    unsigned features, off;
    int k, changed;
    if (done)
        return unknown;
    done = 1;
    features = bpfast_cpu_detect();
    list = getenv("BPFAST_DISABLE_CPU_FEATURES");
    off = list != NULL ? bpfast_cpu_parse(list, unknown, sizeof unknown) : 0;
    features &= ~off;
    do {  /* a feature goes with any it is built on */
        changed = 0;
        for (k = 0; k < BPFAST_CPU_COUNT; k++) {
            unsigned bit = bpfast_cpu_table[k].bit, needs = bpfast_cpu_table[k].needs;
            if ((features & bit) && (features & needs) != needs) {
                features &= ~bit;
                changed = 1;
            }
        }
    } while (changed);
    bpfast_cpu_features = features;
    return unknown;
}

/* The processor features the kernels' dispatch uses: detected once, then narrowed by the
 * environment variable BPFAST_DISABLE_CPU_FEATURES (a comma list such as "avx512f" or
 * "avx512f,avx2"), so that the whole package acts as on a processor without them.
 *
 * Every availability check in the package reads bpfast_cpu_has(); nothing else asks the
 * processor. Disabling a feature also disables those built on it (avx2 or fma: avx512f).
 */
#ifndef BPFAST_CPU_H
#define BPFAST_CPU_H

#include "platform.h"

enum {
    BPFAST_CPU_AVX2 = 1u << 0,
    BPFAST_CPU_FMA = 1u << 1,
    BPFAST_CPU_AVX512F = 1u << 2,
    BPFAST_CPU_NEON = 1u << 3
};

/* The features in use (BPFAST_CPU_* bits); set by bpfast_cpu_init. */
extern unsigned bpfast_cpu_features;

/* Detects the features and applies BPFAST_DISABLE_CPU_FEATURES (once; later calls do
 * nothing). Returns the names in the variable that are not features, comma-separated
 * ("" when none), for the caller to warn about. */
const char *bpfast_cpu_init(void);

/* Every feature name the variable accepts, comma-separated. */
const char *bpfast_cpu_known_names(void);

/* The name of feature bit 1 << index (index 0, 1, ...), NULL past the last. */
const char *bpfast_cpu_feature_name(int index);

static inline int bpfast_cpu_has(unsigned features)
{
    return (bpfast_cpu_features & features) == features;
}

#endif

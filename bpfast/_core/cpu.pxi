# The C kernels' dispatch: the processor's features (less BPFAST_DISABLE_CPU_FEATURES)
# pick one copy of every kernel, once, before anything below asks what is available.
cdef extern from "kernels.h":
    const char* bpfast_dispatch_init()
    const char* bpfast_dispatch_target()
    const char* bpfast_cpu_known_names()
    const char* bpfast_cpu_feature_name(int index)
    unsigned bpfast_cpu_features
    int bpfast_missing_kernels(const char** names, int cap)

cdef bytes _unknown_cpu_features = bpfast_dispatch_init()
if _unknown_cpu_features:
    import warnings
    warnings.warn(f"BPFAST_DISABLE_CPU_FEATURES: unknown feature name(s) "
                  f"{_unknown_cpu_features.decode()}; valid names: "
                  f"{bpfast_cpu_known_names().decode()}", RuntimeWarning, stacklevel=2)


def cpu_features():
    """The processor features the kernels' dispatch uses here (e.g. ``['avx2', 'fma']``),
    after BPFAST_DISABLE_CPU_FEATURES."""
    names = []
    cdef int i = 0
    while bpfast_cpu_feature_name(i) != NULL:
        if bpfast_cpu_features & (1u << i):
            names.append(bpfast_cpu_feature_name(i).decode())
        i += 1
    return names


def kernel_target():
    """The copy of the kernels in use: ``'avx512f'``, ``'avx2'`` or ``'baseline'``."""
    return bpfast_dispatch_target().decode()



def missing_kernels():
    """The kernels the copy in use does not have (empty entries of its table), by name;
    tests check that no available route calls one."""
    cdef const char* names[256]
    cdef int n = bpfast_missing_kernels(names, 256)
    return [names[i].decode() for i in range(n)]

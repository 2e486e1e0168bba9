/* What the C sources need to know about the compiler and the build, in one place.
 *
 * BPFAST_X86_DISPATCH: the build carries kernels for wider x86-64 instruction sets
 * (AVX2, AVX-512), picked at run time by dispatch.c. Only with GCC or clang on x86-64,
 * and never in a portable build (BPFAST_PORTABLE, set by setup.py), which compiles the
 * baseline sources alone: no target attributes or pragmas, intrinsics or vector types.
 */
#ifndef BPFAST_PLATFORM_H
#define BPFAST_PLATFORM_H

#if !defined(BPFAST_PORTABLE) && defined(__x86_64__) && \
    (defined(__GNUC__) || defined(__clang__)) && !defined(__INTEL_COMPILER)
#define BPFAST_X86_DISPATCH 1
#else
#define BPFAST_X86_DISPATCH 0
#endif

/* Pointers that never alias: a keyword of C99, spelt otherwise by MSVC. */
#if defined(_MSC_VER) && !defined(__clang__)
#define BPFAST_RESTRICT __restrict
#else
#define BPFAST_RESTRICT restrict
#endif

/* Helpers that must be inlined into each kernel, so that every target's copy of a kernel
 * is compiled whole for that target. */
#if defined(__GNUC__) || defined(__clang__)
#define BPFAST_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define BPFAST_ALWAYS_INLINE static inline
#endif

/* "omp simd" hints (honoured under -fopenmp-simd, no OpenMP runtime), where understood. */
#if defined(__GNUC__) || defined(__clang__)
#define BPFAST_OMP(text) _Pragma(text)
#else
#define BPFAST_OMP(text)
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define BPFAST_THREAD_LOCAL __declspec(thread)
#elif defined(__GNUC__) || defined(__clang__)
#define BPFAST_THREAD_LOCAL __thread
#else
#define BPFAST_THREAD_LOCAL _Thread_local
#endif

/* ln 2, spelt out: M_LN2 is not standard C (MSVC hides it). */
#define BPFAST_LN2 0.69314718055994530942

#endif

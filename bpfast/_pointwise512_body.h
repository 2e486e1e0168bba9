/* The passes of _pointwise512.h for one element type. Included there once per type,
 * with PW_T (the type), PW_V / PW_M / PW_W (vector, mask, lanes), PW_NAME (the type's
 * suffix) and the intrinsics defined, which the end of this file undefines for the next
 * type; no include guard on purpose. */

/* g'(a) for the activations whose derivative comes from A (BPFAST_FROM_A_* of
 * _pointwise.h): the same formulas as there */
BPFAST_PW_ATTR PW_V PW_NAME(bp_pw_gprime)(int kind, PW_V a)
{
    const PW_V one = PW_SET1((PW_T)1);
    if (kind == BPFAST_FROM_A_SIGMOID)
        return PW_MUL(a, PW_SUB(one, a));
    if (kind == BPFAST_FROM_A_TANH)
        return PW_SUB(one, PW_MUL(a, a));
    return a;
}

/* Lanes [0, count) of a vector (count >= PW_W: all of them). */
BPFAST_PW_ATTR PW_M PW_NAME(bp_pw_lanes)(ptrdiff_t count)
{
    return count >= PW_W ? (PW_M)~(PW_M)0 : (PW_M)((1u << count) - 1u);
}

/* Loads and stores of lanes `mask`, plain ones when `full` (a constant after inlining:
 * masked forms of whole vectors are slower on some processors). Masked-out lanes load
 * as 0. */
#define PW_LOAD_LANES(full, mask, p) ((full) ? PW_LOAD(p) : PW_MLOAD(mask, p))
#define PW_STORE_LANES(full, mask, p, v)                                                 \
    do {                                                                                 \
        if (full)                                                                        \
            PW_STORE(p, v);                                                              \
        else                                                                             \
            PW_MSTORE(p, mask, v);                                                       \
    } while (0)

/* One vector of the hidden delta (mse = 0) or of the output delta (mse = 1) at element
 * offset k, lanes `mask` (all when `full`): Z[k..] = v, *acc += v, and for the output
 * delta the squares of A - Y into sq. Lanes outside the mask give v = 0. */
BPFAST_PW_ATTR void PW_NAME(bp_pw_delta_vector)(
    const int mse, const int full, int kind, ptrdiff_t k, PW_M mask, const PW_T *dA,
    const PW_T *A, const PW_T *Y, PW_T *Z, int exact, PW_V scale, PW_V *acc, __m512d *sq)
{
    PW_V a = PW_LOAD_LANES(full, mask, A + k), v;
    if (!mse) {
        v = PW_MUL(PW_LOAD_LANES(full, mask, dA + k), PW_NAME(bp_pw_gprime)(kind, a));
    } else {
        PW_V r = PW_SUB(a, PW_LOAD_LANES(full, mask, Y + k));
        PW_SQUARES(sq, r);
        v = exact ? PW_MUL(r, scale) : PW_DIV(r, scale);
        if (kind >= 0)
            v = PW_MUL(v, PW_NAME(bp_pw_gprime)(kind, a));
    }
    PW_STORE_LANES(full, mask, Z + k, v);
    *acc = PW_ADD(*acc, v);
}

/* The flat walk of a delta pass over the m x n block, the row pattern repeating every
 * Q vectors (Q = bpfast_pw_period(n, PW_W), a constant in each instance): Q column-sum
 * vectors in registers, folded into db at the end. Returns the sum of squares (mse). */
BPFAST_PW_ATTR double PW_NAME(bp_pw_delta_flat)(
    const int mse, const int Q, int kind, ptrdiff_t m, ptrdiff_t n, const PW_T *dA,
    const PW_T *A, const PW_T *Y, PW_T *Z, int exact, PW_V scale, PW_T *db)
{
    PW_V acc[BPFAST_PW_MAX_VECTORS];
    __m512d sq[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    PW_T part[BPFAST_PW_MAX_VECTORS * PW_W];
    const PW_M all = (PW_M)~(PW_M)0;
    ptrdiff_t N = m * n, k = 0, s, column;
    int p;
#pragma GCC unroll 8
    for (p = 0; p < Q; p++)
        acc[p] = PW_ZERO();
    for (; k + Q * PW_W <= N; k += Q * PW_W) {
#pragma GCC unroll 8
        for (p = 0; p < Q; p++)
            PW_NAME(bp_pw_delta_vector)(mse, 1, kind, k + p * PW_W, all, dA, A, Y, Z,
                                        exact, scale, &acc[p], sq);
    }
#pragma GCC unroll 8
    for (p = 0; p < Q; p++) {  /* the last, partial period */
        if (k + p * PW_W < N)
            PW_NAME(bp_pw_delta_vector)(mse, 0, kind, k + p * PW_W,
                                        PW_NAME(bp_pw_lanes)(N - k - p * PW_W), dA, A, Y,
                                        Z, exact, scale, &acc[p], sq);
    }
#pragma GCC unroll 8
    for (p = 0; p < Q; p++)
        PW_STORE(part + p * PW_W, acc[p]);
    memset(db, 0, (size_t)n * sizeof(PW_T));
    for (s = 0, column = 0; s < (ptrdiff_t)Q * PW_W; s++) {  /* s of a period: s mod n */
        db[column] += part[s];
        if (++column == n)
            column = 0;
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(sq[0], sq[1]));
}

/* The row walk of a delta pass over columns [j0, j0 + NV PW_W) (the last vector's lanes
 * in `last`), NV a constant in each instance: the NV column sums in registers, stored to
 * db at the end. Returns the sum of squares (mse). */
BPFAST_PW_ATTR double PW_NAME(bp_pw_delta_rows)(
    const int mse, const int NV, int kind, ptrdiff_t m, ptrdiff_t n, ptrdiff_t j0,
    PW_M last, const PW_T *dA, const PW_T *A, const PW_T *Y, PW_T *Z, int exact,
    PW_V scale, PW_T *db)
{
    PW_V acc[BPFAST_PW_MAX_VECTORS];
    __m512d sq[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    const PW_M all = (PW_M)~(PW_M)0;
    ptrdiff_t i;
    int v;
#pragma GCC unroll 8
    for (v = 0; v < NV; v++)
        acc[v] = PW_ZERO();
    for (i = 0; i < m; i++) {
#pragma GCC unroll 8
        for (v = 0; v < NV - 1; v++)
            PW_NAME(bp_pw_delta_vector)(mse, 1, kind, i * n + j0 + v * PW_W, all, dA, A, Y,
                                        Z, exact, scale, &acc[v], sq);
        if (last == all)
            PW_NAME(bp_pw_delta_vector)(mse, 1, kind, i * n + j0 + (NV - 1) * PW_W, all,
                                        dA, A, Y, Z, exact, scale, &acc[NV - 1], sq);
        else
            PW_NAME(bp_pw_delta_vector)(mse, 0, kind, i * n + j0 + (NV - 1) * PW_W, last,
                                        dA, A, Y, Z, exact, scale, &acc[NV - 1], sq);
    }
#pragma GCC unroll 8
    for (v = 0; v < NV; v++)
        PW_MSTORE(db + j0 + v * PW_W, v == NV - 1 ? last : all, acc[v]);
    return _mm512_reduce_add_pd(_mm512_add_pd(sq[0], sq[1]));
}

#define BPFAST_PW_CASES(F, ...)                                                          \
    case 1: return F(__VA_ARGS__, 1, kind, m, n, PW_TAIL_ARGS);                           \
    case 2: return F(__VA_ARGS__, 2, kind, m, n, PW_TAIL_ARGS);                           \
    case 3: return F(__VA_ARGS__, 3, kind, m, n, PW_TAIL_ARGS);                           \
    case 4: return F(__VA_ARGS__, 4, kind, m, n, PW_TAIL_ARGS);                           \
    case 5: return F(__VA_ARGS__, 5, kind, m, n, PW_TAIL_ARGS);                           \
    case 6: return F(__VA_ARGS__, 6, kind, m, n, PW_TAIL_ARGS);                           \
    case 7: return F(__VA_ARGS__, 7, kind, m, n, PW_TAIL_ARGS);                           \
    default: return F(__VA_ARGS__, 8, kind, m, n, PW_TAIL_ARGS);

/* A delta pass: the flat walk when the row pattern is short, else the row walk in
 * blocks of up to BPFAST_PW_MAX_VECTORS vectors of columns. */
BPFAST_PW_ATTR double PW_NAME(bp_pw_delta)(
    const int mse, int kind, ptrdiff_t m, ptrdiff_t n, const PW_T *dA, const PW_T *A,
    const PW_T *Y, PW_T *Z, int exact, PW_V scale, PW_T *db)
{
    /* flat only for ragged rows, and more than one: otherwise the row walk does the same
       vectors without the fold */
    int q = n % PW_W != 0 && m > 1 ? bpfast_pw_period(n, PW_W) : 0, nv;
    ptrdiff_t j0;
    double total = 0;
    PW_M last;
    if (q > 0) {
        switch (q) {
#define PW_TAIL_ARGS dA, A, Y, Z, exact, scale, db
            BPFAST_PW_CASES(PW_NAME(bp_pw_delta_flat), mse)
#undef PW_TAIL_ARGS
#undef BPFAST_PW_CASES
        }
    }
    for (j0 = 0; j0 < n; j0 += BPFAST_PW_MAX_VECTORS * PW_W) {
        ptrdiff_t left = n - j0;
        nv = left >= BPFAST_PW_MAX_VECTORS * PW_W ? BPFAST_PW_MAX_VECTORS
                                                 : (int)((left + PW_W - 1) / PW_W);
        last = PW_NAME(bp_pw_lanes)(left - (ptrdiff_t)(nv - 1) * PW_W);
        switch (nv) {
#define PW_TAIL_ARGS j0, last, dA, A, Y, Z, exact, scale, db
        case 1: total += PW_NAME(bp_pw_delta_rows)(mse, 1, kind, m, n, PW_TAIL_ARGS); break;
        case 2: total += PW_NAME(bp_pw_delta_rows)(mse, 2, kind, m, n, PW_TAIL_ARGS); break;
        case 3: total += PW_NAME(bp_pw_delta_rows)(mse, 3, kind, m, n, PW_TAIL_ARGS); break;
        case 4: total += PW_NAME(bp_pw_delta_rows)(mse, 4, kind, m, n, PW_TAIL_ARGS); break;
        case 5: total += PW_NAME(bp_pw_delta_rows)(mse, 5, kind, m, n, PW_TAIL_ARGS); break;
        case 6: total += PW_NAME(bp_pw_delta_rows)(mse, 6, kind, m, n, PW_TAIL_ARGS); break;
        case 7: total += PW_NAME(bp_pw_delta_rows)(mse, 7, kind, m, n, PW_TAIL_ARGS); break;
        default: total += PW_NAME(bp_pw_delta_rows)(mse, 8, kind, m, n, PW_TAIL_ARGS); break;
#undef PW_TAIL_ARGS
#undef BPFAST_PW_CASES
        }
    }
    return total;
}

/* Z = dA (.) g'(A), g' from A (kind: BPFAST_FROM_A_*); db = column sums of Z */
__attribute__((target("avx512f"))) static void PW_NAME(bpfast_delta_from_a512)(
    int kind, ptrdiff_t m, ptrdiff_t n, const PW_T *dA, const PW_T *A, PW_T *Z, PW_T *db)
{
    PW_NAME(bp_pw_delta)(0, kind, m, n, dA, A, NULL, Z, 1, PW_SET1((PW_T)1), db);
}

/* The squared error's output delta over unweighted rows, g' from A (kind
 * BPFAST_FROM_A_*) or the identity (kind -1): Z = (A - Y) / denom (.) g',
 * db = column sums of Z; returns sum (A - Y)^2 in double */
__attribute__((target("avx512f"))) static double PW_NAME(bpfast_mse_delta512)(
    int kind, ptrdiff_t m, ptrdiff_t n, const PW_T *A, const PW_T *Y, PW_T denom,
    PW_T *Z, PW_T *db)
{
    int exact = bpfast_pw_exact_reciprocal((double)denom);
    PW_V scale = PW_SET1(exact ? (PW_T)1 / denom : denom);
    return PW_NAME(bp_pw_delta)(1, kind, m, n, NULL, A, Y, Z, exact, scale, db);
}

/* g(x) for act (BPFAST_ACT_*) */
BPFAST_PW_ATTR PW_V PW_NAME(bp_pw_act)(int act, PW_V x)
{
    if (act == BPFAST_ACT_SIGMOID)
        return PW_SIGMOID(x);
    if (act == BPFAST_ACT_TANH)
        return PW_TANH(x);
    if (act == BPFAST_ACT_EXP)
        return PW_EXP(x);
    return PW_SILU(x);
}

/* Z += 1 b^T and A = g(Z) in one pass (act: BPFAST_ACT_*). Flat when the row pattern
 * repeats within BPFAST_PW_MAX_VECTORS vectors (the bias repeated to that period), else
 * row by row with a masked last vector. A may be Z. */
__attribute__((target("avx512f"))) static void PW_NAME(bpfast_bias_act512)(
    int act, ptrdiff_t m, ptrdiff_t n, const PW_T *b, PW_T *Z, PW_T *A)
{
    PW_T pattern[BPFAST_PW_MAX_VECTORS * PW_W];
    /* flat over several rows: rows of whole vectors with b itself as the period, ragged
       ones with b repeated to a period of q vectors; one row, or a long pattern, row by
       row */
    int q = n % PW_W != 0 && m > 1 ? bpfast_pw_period(n, PW_W) : 0;
    int flat = m > 1 && (n % PW_W == 0 || q > 0);
    ptrdiff_t N = m * n, k, i, j, s, rows = flat ? 1 : m, len = flat ? N : n;
    ptrdiff_t period = q > 0 ? (ptrdiff_t)q * PW_W : n;
    const PW_T *bias = b;
    if (q > 0) {
        for (s = 0, j = 0; s < period; s++) {
            pattern[s] = b[j];
            if (++j == n)
                j = 0;
        }
        bias = pattern;
    }
    /* one flat row of N values with the bias period, or m rows of n */
    for (i = 0; i < rows; i++) {
        PW_T *z = Z + i * len;
        PW_T *a = A + i * len;
        for (k = 0, j = 0; k + PW_W <= len; k += PW_W) {
            PW_V x = PW_ADD(PW_LOAD(z + k), PW_LOAD(bias + j));
            PW_STORE(z + k, x);
            PW_STORE(a + k, PW_NAME(bp_pw_act)(act, x));
            j += PW_W;
            if (j >= period)
                j = 0;
        }
        if (k < len) {
            PW_M mask = PW_NAME(bp_pw_lanes)(len - k);
            PW_V x = PW_ADD(PW_MLOAD(mask, z + k), PW_MLOAD(mask, bias + j));
            PW_MSTORE(z + k, mask, x);
            PW_MSTORE(a + k, mask, PW_NAME(bp_pw_act)(act, x));
        }
    }
}

/* this type's parameters, undefined for the next */
#undef PW_T
#undef PW_V
#undef PW_M
#undef PW_W
#undef PW_NAME
#undef PW_LOAD
#undef PW_MLOAD
#undef PW_STORE
#undef PW_MSTORE
#undef PW_ADD
#undef PW_SUB
#undef PW_MUL
#undef PW_DIV
#undef PW_SET1
#undef PW_ZERO
#undef PW_SIGMOID
#undef PW_TANH
#undef PW_EXP
#undef PW_SILU
#undef PW_SQUARES
#undef PW_LOAD_LANES
#undef PW_STORE_LANES
#undef PW_TAIL_ARGS
#undef BPFAST_PW_CASES

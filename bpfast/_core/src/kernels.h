/* The C side as its callers see it (the compiled module's .pyx and .pxd files, and C
 * test programs): the kernels under their names, each a call through the table that
 * bpfast_dispatch_init fills once at import (dispatch.c); the route switches and
 * availability checks; the inline scalar helpers.
 *
 * Not included by the kernel families themselves: their wrapper units (dispatch_*.c)
 * define static functions under these same names.
 */
#ifndef BPFAST_KERNELS_H
#define BPFAST_KERNELS_H

#include <stddef.h>
#include "platform.h"
#include "cpu.h"
#include "kernel_table.h"
#include "routes.h"
#include "tiles.h"
#include "panel.h"
#include "vmath.h"
#include "reduce.h"

extern bpfast_kernel_table bpfast_kernels;

/* Detects the processor's features (cpu.h, the environment's override included) and
 * fills bpfast_kernels with the widest copy they run; once, later calls only return.
 * Returns the unknown names in BPFAST_DISABLE_CPU_FEATURES ("" when none). */
const char *bpfast_dispatch_init(void);

/* The copy in use: "avx512f", "avx2" or "baseline". */
const char *bpfast_dispatch_target(void);

/* The table's empty entries (kernels the copy in use does not have), up to cap names;
   returns how many (tests check them against the availability checks). */
int bpfast_missing_kernels(const char **names, int cap);

/* max_k |x[k]| over n doubles (size 8) or floats (size 4), +inf if any is not finite:
   on the BLAS's thread count for large arrays where the pool runs (parallel_reduce.c) */
double bpfast_max_abs_parallel(const void *x, ptrdiff_t n, int size);

/* Each name calls through the table; the same names as the kernels' own. */
#define bpfast_bias_pwl_d (bpfast_kernels.bpfast_bias_pwl_d)
#define bpfast_bias_pwl_f (bpfast_kernels.bpfast_bias_pwl_f)
#define bpfast_delta_pwl_d (bpfast_kernels.bpfast_delta_pwl_d)
#define bpfast_delta_pwl_f (bpfast_kernels.bpfast_delta_pwl_f)
#define bpfast_bias_add_d (bpfast_kernels.bpfast_bias_add_d)
#define bpfast_bias_add_f (bpfast_kernels.bpfast_bias_add_f)
#define bpfast_delta_from_a_d (bpfast_kernels.bpfast_delta_from_a_d)
#define bpfast_delta_from_a_f (bpfast_kernels.bpfast_delta_from_a_f)
#define bpfast_mse_delta_d (bpfast_kernels.bpfast_mse_delta_d)
#define bpfast_mse_delta_f (bpfast_kernels.bpfast_mse_delta_f)
#define bpfast_xent_loss_d (bpfast_kernels.bpfast_xent_loss_d)
#define bpfast_xent_loss_f (bpfast_kernels.bpfast_xent_loss_f)
#define bpfast_max_abs_d (bpfast_kernels.bpfast_max_abs_d)
#define bpfast_max_abs_f (bpfast_kernels.bpfast_max_abs_f)
#define bpfast_update_d (bpfast_kernels.bpfast_update_d)
#define bpfast_update_f (bpfast_kernels.bpfast_update_f)
#define bpfast_exp_row_d (bpfast_kernels.bpfast_exp_row_d)
#define bpfast_exp_row_f (bpfast_kernels.bpfast_exp_row_f)
#define bpfast_tanh_row_d (bpfast_kernels.bpfast_tanh_row_d)
#define bpfast_tanh_row_f (bpfast_kernels.bpfast_tanh_row_f)
#define bpfast_sigmoid_row_d (bpfast_kernels.bpfast_sigmoid_row_d)
#define bpfast_sigmoid_row_f (bpfast_kernels.bpfast_sigmoid_row_f)
#define bpfast_silu_row_d (bpfast_kernels.bpfast_silu_row_d)
#define bpfast_silu_row_f (bpfast_kernels.bpfast_silu_row_f)
#define bpfast_softmax_rows_d (bpfast_kernels.bpfast_softmax_rows_d)
#define bpfast_softmax_rows_f (bpfast_kernels.bpfast_softmax_rows_f)
#define bpfast_pw_bias_act_d (bpfast_kernels.bpfast_pw_bias_act_d)
#define bpfast_pw_bias_act_f (bpfast_kernels.bpfast_pw_bias_act_f)
#define bpfast_pw_delta_from_a_d (bpfast_kernels.bpfast_pw_delta_from_a_d)
#define bpfast_pw_delta_from_a_f (bpfast_kernels.bpfast_pw_delta_from_a_f)
#define bpfast_pw_mse_delta_d (bpfast_kernels.bpfast_pw_mse_delta_d)
#define bpfast_pw_mse_delta_f (bpfast_kernels.bpfast_pw_mse_delta_f)
#define bpfast_small_dgemm (bpfast_kernels.bpfast_small_dgemm)
#define bpfast_small_sgemm (bpfast_kernels.bpfast_small_sgemm)
#define bpfast_layer_forward_d (bpfast_kernels.bpfast_layer_forward_d)
#define bpfast_layer_forward_f (bpfast_kernels.bpfast_layer_forward_f)
#define bpfast_layer_forward_d_back (bpfast_kernels.bpfast_layer_forward_d_back)
#define bpfast_layer_forward_f_back (bpfast_kernels.bpfast_layer_forward_f_back)
#define bpfast_grad_update_d (bpfast_kernels.bpfast_grad_update_d)
#define bpfast_grad_update_f (bpfast_kernels.bpfast_grad_update_f)
#define bpfast_vp_d_vecmat (bpfast_kernels.bpfast_vp_d_vecmat)
#define bpfast_vp_f_vecmat (bpfast_kernels.bpfast_vp_f_vecmat)
#define bpfast_vp_d_matvec (bpfast_kernels.bpfast_vp_d_matvec)
#define bpfast_vp_f_matvec (bpfast_kernels.bpfast_vp_f_matvec)
#define bpfast_vp_d_rank1 (bpfast_kernels.bpfast_vp_d_rank1)
#define bpfast_vp_f_rank1 (bpfast_kernels.bpfast_vp_f_rank1)
#define bpfast_panel_d (bpfast_kernels.bpfast_panel_d)
#define bpfast_panel_f (bpfast_kernels.bpfast_panel_f)

#endif

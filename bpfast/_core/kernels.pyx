# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""bpfast's compiled core: the forward pass, back-propagation and whole training epochs
over all layers of a network.

Shapes follow the NumPy convention, one sample per row: for layer ``l`` (0-based here)
``W[l]`` is ``(n[l+1], n[l])``, ``b[l]`` is ``(n[l+1],)``, and ``Z[l]``, ``A[l]`` are
``(m, n[l+1])``. Per layer, in row terms::

    Z = A_prev @ W.T + b        A = g(Z)
    dW = dZ.T @ A_prev          db = dZ.sum(axis=0)        dA_prev = dZ @ W

The Python entry points check every buffer (type, dtype, shape, contiguity) before any
pointer is taken, then run the whole pass without the GIL and without allocating.

The body is split into include files along the derivation:

    cpu.pxi        the kernels' dispatch, chosen once at import from the processor's
                   features (cpu_features())
    arguments.pxi  the passes' arguments grouped in structs (network, batch, settings,
                   step policy, guard, epoch)
    forward.pxi    z = a_prev W^T + b, a = g(z)
    backward.pxi   the output delta, the hidden delta dZ = dA (.) g'(Z), dW = dZ^T A_prev
                   and dA_prev = dZ W: one backward routine with a step policy
    step.pxi       the optimizer updates (SGD, momentum, Nesterov, Adam) and a batch's step
    guard.pxi      the overflow guard (update_is_safe) and the data's magnitudes
    epoch.pxi      train_epoch: the batches of an epoch, and signals between them
    trainer.pxi    the Layers and Trainer classes
    switches.pxi   the set_* switches for tests and benchmarks
    blas.pxi       the BLAS found at run time, and probes of gemm's routes

They make one extension module rather than several on purpose: every module would link
its own copy of the C kernels' state (the dispatch table, the thread pool, the BLAS
pointers, the switches), and a switch set through one would not reach the others; and in
one translation unit the C compiler inlines the Cython steps into each other (a forward
pass into a training step, a layer's update into the backward loop).
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset, memcpy
from libc.math cimport sqrt, pow, isfinite, log, logf, frexp, HUGE_VAL, NAN
from libc.float cimport FLT_EPSILON, DBL_EPSILON, FLT_MAX, DBL_MAX
from cython cimport floating

cdef extern from "platform.h":
    double BPFAST_LN2  # ln 2 (M_LN2 is not standard C)

cimport numpy as cnp
import threading

import numpy as np

from ._blas cimport (gemm, bpfast_small_gemm_limit, bpfast_dgemm_ptr, bpfast_sgemm_ptr,
                     bpfast_blas_ilp64, bpfast_panel_route)
from ._activation_math cimport (activate, derivative, relu, relu_prime,
                               leaky_relu, leaky_relu_prime, IDENTITY, SIGMOID,
                               TANH, RELU, LEAKY_RELU, SOFTPLUS, SILU, SOFTMAX, EXP)

cdef enum:
    LOSS_MSE = 0
    LOSS_CE = 1
    LOSS_BCE = 2
    LOSS_POISSON = 3
    OPT_SGD = 0
    OPT_ADAM = 1

cnp.import_array()

include "cpu.pxi"
include "arguments.pxi"
include "forward.pxi"
include "backward.pxi"
include "step.pxi"
include "guard.pxi"
include "epoch.pxi"
include "trainer.pxi"
include "switches.pxi"
include "blas.pxi"

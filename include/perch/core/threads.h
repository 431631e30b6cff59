// perch/core/threads.h — one fixed pool of worker threads for the kernels' parallel loops.
//
// The pool has num_threads() - 1 workers; the calling thread takes part, so num_threads() == 1 means
// every loop runs inline. Size: PERCH_NUM_THREADS (read once) or, by default, the hardware threads the
// process may use. Workers are created on first use and sleep between loops (a short spin first).
//
// parallel_for(begin, end, fn) calls fn(lo, hi) on disjoint sub-ranges that cover [begin, end), each
// with hi - lo >= grain except possibly the last. It returns when all calls have returned; the first
// exception thrown by fn is rethrown in the caller. Calls from inside a parallel loop (or while another
// thread owns the pool) run inline, so nesting is safe and never deadlocks.
// BLAS is kept single-threaded (see gemm_f32.cpp): perch parallelizes above it.
#pragma once

#include <cstdint>
#include <functional>

namespace perch {

int num_threads();
// Resizes the pool (n <= 0: back to the default). Not to be called from inside a parallel loop.
void set_num_threads(int n);
void parallel_for(int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

}  // namespace perch

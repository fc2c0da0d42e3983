// A pool of CPU threads for the extension's kernels, built for machines that other processes share.
//
// OpenMP's parallel regions (ATen's at::parallel_for) end in a barrier that waits for every thread of
// the team, including one the OS has descheduled in favour of another process: on a busy machine each
// region can cost a scheduler time slice, and a model with a few hundred regions per forward becomes
// slower with two threads than with one. run_tasks() has no such barrier. The calling thread works on
// the tasks itself and returns as soon as every task is done; a pool thread that has not woken up yet
// when the tasks run out is simply not waited for, and one descheduled in the middle of a task delays
// the call by that one task. Tasks are taken one at a time from a shared counter, so a slow thread
// takes fewer of them. On an idle machine the pool threads spin briefly for the next call before they
// sleep, so back-to-back calls do not pay a wake-up each.
//
// Results never depend on the number of threads: the tasks are a function of the shapes, and every
// task writes only its own outputs.
#pragma once

#include <cstdint>
#include <functional>

namespace powerbert {

// Runs fn(task, slot) for every task in [0, tasks) and returns when all are done. `slot` identifies the
// thread running the task, 0 <= slot < max_threads, and is unique among threads running concurrently
// (for per-thread scratch). At most max_threads threads take part, the caller included; max_threads is
// capped by at::get_num_threads(). With max_threads == 1, with one task, inside an OpenMP region, or
// while another caller has the pool, the calling thread runs every task itself (slot 0). An exception
// thrown by a task is rethrown here after the other tasks have finished.
void run_tasks(int64_t tasks, int64_t max_threads, const std::function<void(int64_t task, int slot)>& fn);

// The number of threads run_tasks may use: at::get_num_threads().
int64_t task_threads();

}  // namespace powerbert

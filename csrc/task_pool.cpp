// The extension's CPU thread pool (see powerbert/task_pool.h for why it exists and what it promises).
#include "powerbert/task_pool.h"

#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "powerbert/cpu_blas.h"

namespace powerbert {

namespace {

// How long a pool thread spins for the next call before it sleeps. Consecutive calls of one forward are
// tens of microseconds apart (the Python between two ops); a futex wake-up costs about as much again.
// On a machine whose cores are all busy the spinning is short enough not to matter.
constexpr auto kSpin = std::chrono::microseconds(100);

struct Pool {
  std::mutex mutex;
  std::condition_variable wake;      // pool threads wait here for a call
  std::condition_variable finished;  // the caller waits here for its last tasks
  std::atomic<uint64_t> generation{0};
  // The current call; read and written under `mutex` only.
  const std::function<void(int64_t, int)>* fn = nullptr;
  int64_t total = 0, next = 0, done = 0;
  int64_t helpers = 0;  // pool threads that may take part in this call
  int next_slot = 1;
  std::exception_ptr error;
  bool busy = false;
  int sleeping = 0;
  int64_t started = 0;  // pool threads started so far (never stopped)
};

Pool* pool = nullptr;
std::once_flag pool_once;

void reset_after_fork() {
  // A forked child has none of the parent's threads, and the mutex may have been held: start afresh
  // (the old pool is leaked on purpose; its memory is the parent's copy).
  pool = new Pool();
}

Pool& the_pool() {
  std::call_once(pool_once, [] {
    pool = new Pool();
    pthread_atfork(nullptr, nullptr, reset_after_fork);
  });
  return *pool;
}

// Runs the tasks of the current call until none is left; `lock` is held on entry and on return.
void work(Pool& p, std::unique_lock<std::mutex>& lock, int slot) {
  while (p.next < p.total) {
    const int64_t task = p.next++;
    const auto* fn = p.fn;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*fn)(task, slot);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (error && !p.error) p.error = error;
    if (++p.done == p.total) p.finished.notify_all();
  }
}

void pool_thread(Pool* p, int64_t index) {
  set_sequential_blas(1);  // each task is one thread's work: BLAS must not start threads of its own
  uint64_t seen = 0;
  for (;;) {
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    while (p->generation.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    std::unique_lock<std::mutex> lock(p->mutex);
    if (p->generation.load(std::memory_order_relaxed) == seen) {
      ++p->sleeping;
      p->wake.wait(lock, [&] { return p->generation.load(std::memory_order_relaxed) != seen; });
      --p->sleeping;
    }
    seen = p->generation.load(std::memory_order_relaxed);
    if (index >= p->helpers || p->next >= p->total) continue;
    work(*p, lock, p->next_slot++);
  }
}

void run_here(int64_t tasks, const std::function<void(int64_t, int)>& fn) {
  const int previous = set_sequential_blas(1);
  try {
    for (int64_t task = 0; task < tasks; ++task) fn(task, 0);
  } catch (...) {
    set_sequential_blas(previous);
    throw;
  }
  set_sequential_blas(previous);
}

}  // namespace

int64_t task_threads() { return std::max<int64_t>(1, at::get_num_threads()); }

void run_tasks(int64_t tasks, int64_t max_threads, const std::function<void(int64_t task, int slot)>& fn) {
  if (tasks <= 0) return;
  const int64_t threads = std::min({max_threads, task_threads(), tasks});
  if (threads <= 1 || at::in_parallel_region()) return run_here(tasks, fn);
  Pool& p = the_pool();
  std::unique_lock<std::mutex> lock(p.mutex);
  if (p.busy) {  // another Python thread's call is running: this one runs on its own thread
    lock.unlock();
    return run_here(tasks, fn);
  }
  p.busy = true;
  while (p.started < threads - 1) {
    std::thread(pool_thread, &p, p.started).detach();
    ++p.started;
  }
  p.fn = &fn;
  p.total = tasks;
  p.next = 0;
  p.done = 0;
  p.helpers = threads - 1;
  p.next_slot = 1;
  p.error = nullptr;
  p.generation.fetch_add(1, std::memory_order_release);
  if (p.sleeping > 0) p.wake.notify_all();
  const int previous = set_sequential_blas(1);
  work(p, lock, 0);
  set_sequential_blas(previous);
  // Only tasks already taken by a running pool thread can be left: never a thread that has not started.
  p.finished.wait(lock, [&] { return p.done == p.total; });
  std::exception_ptr error = p.error;
  p.fn = nullptr;
  p.total = p.next = p.done = 0;
  p.error = nullptr;
  p.busy = false;
  lock.unlock();
  if (error) std::rethrow_exception(error);
}

}  // namespace powerbert

#include "perch/core/threads.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "perch/core/error.h"

namespace perch {

namespace {

int default_threads() {
  if (const char* e = std::getenv("PERCH_NUM_THREADS"); e && *e) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    PERCH_CHECK(end && *end == '\0' && v >= 1 && v <= 1024, "PERCH_NUM_THREADS must be an integer in [1, 1024], got '",
                e, "'");
    return static_cast<int>(v);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

thread_local bool t_in_loop = false;

// One loop at a time. The owner publishes a Job and takes part in it; everyone claims chunks from
// job->next. The owner waits for *chunks* to finish, not for workers to wake up: on a busy machine a
// worker may be descheduled for a whole time slice, and the owner then simply does its share. A worker
// that wakes late finds nothing left to claim (the Job stays alive through its shared_ptr).
struct Job {
  int64_t end = 0, chunk = 1, chunks = 0;
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex err_mu;
  std::exception_ptr error;
};

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { work(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return threads_; }
  std::mutex& owner() { return owner_; }

  void run(int64_t begin, int64_t end, int64_t chunk, const std::function<void(int64_t, int64_t)>& fn) {
    auto job = std::make_shared<Job>();
    job->end = end, job->chunk = chunk, job->chunks = (end - begin + chunk - 1) / chunk, job->fn = &fn;
    job->next.store(begin, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    claim(*job);
    for (int spin = 0; job->done.load(std::memory_order_acquire) != job->chunks; ++spin) {
      if (spin < 4000) {
        __builtin_ia32_pause();
      } else {
        std::unique_lock<std::mutex> lk(mu_);
        done_cv_.wait(lk, [&] { return job->done.load(std::memory_order_acquire) == job->chunks; });
      }
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_.reset();
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void claim(Job& job) {
    t_in_loop = true;
    for (;;) {
      const int64_t lo = job.next.fetch_add(job.chunk, std::memory_order_relaxed);
      if (lo >= job.end) break;
      try {
        (*job.fn)(lo, std::min(job.end, lo + job.chunk));
      } catch (...) {
        std::lock_guard<std::mutex> lk(job.err_mu);
        if (!job.error) job.error = std::current_exception();
      }
      if (job.done.fetch_add(1, std::memory_order_acq_rel) + 1 == job.chunks) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
    }
    t_in_loop = false;
  }

  void work() {
    uint64_t seen = 0;
    for (;;) {
      // Spin a little before sleeping: consecutive layers start loops microseconds apart.
      bool go = false;
      for (int spin = 0; spin < 4000 && !go; ++spin) {
        go = generation_.load(std::memory_order_acquire) != seen;
        if (!go) __builtin_ia32_pause();
      }
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (stop_) return;
        job = job_;
      }
      if (job) claim(*job);
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex owner_;  // held by the thread running a loop on this pool
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::atomic<uint64_t> generation_{0};
  bool stop_ = false;
  std::shared_ptr<Job> job_;
};

std::mutex g_pool_mu;
std::unique_ptr<Pool> g_pool;
int g_requested = 0;  // 0: default

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (!g_pool) g_pool = std::make_unique<Pool>(g_requested > 0 ? g_requested : default_threads());
  return *g_pool;
}

}  // namespace

int num_threads() { return pool().threads(); }

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  g_requested = std::max(0, n);
  g_pool.reset();
}

void parallel_for(int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (end <= begin) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t n = end - begin;
  if (t_in_loop || n <= grain) return fn(begin, end);
  Pool& p = pool();
  if (p.threads() == 1) return fn(begin, end);
  std::unique_lock<std::mutex> own(p.owner(), std::try_to_lock);
  if (!own.owns_lock()) return fn(begin, end);  // another thread is using the pool
  // About four chunks per thread evens out a busy (time-shared) core; never below the grain.
  const int64_t chunk = std::max(grain, (n + 4 * p.threads() - 1) / (4 * p.threads()));
  if (chunk >= n) return fn(begin, end);
  p.run(begin, end, chunk, fn);
}

}  // namespace perch

// Supervises worker child processes of the scheduler (`--local-workers N`).
//
// Each child is `wmserve-worker --scheduler ADDR --name local-K <extra args>`, started with a
// parent-death signal so it never outlives the scheduler. A child that exits is respawned after
// a back-off that doubles (min_backoff .. max_backoff) while it keeps dying young and resets
// once it has stayed up for `stable_after`.
#ifndef WMSERVE_SERVER_LOCAL_WORKERS_H_
#define WMSERVE_SERVER_LOCAL_WORKERS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/metrics.h"

namespace wmserve::server {

struct LocalWorkerOptions {
  int count = 0;
  std::string binary;             // path to wmserve-worker
  std::string scheduler_address;  // what the children dial
  std::vector<std::string> extra_args;
  absl::Duration min_backoff = absl::Milliseconds(500);
  absl::Duration max_backoff = absl::Seconds(30);
  absl::Duration stable_after = absl::Seconds(30);
};

class LocalWorkerSupervisor {
 public:
  static absl::StatusOr<std::unique_ptr<LocalWorkerSupervisor>> Start(
      const LocalWorkerOptions& options, metrics::SchedulerMetrics* metrics);
  ~LocalWorkerSupervisor();

  // SIGTERM to every child, SIGKILL to those still alive after `grace`; no more respawns.
  void Stop(absl::Duration grace);

 private:
  struct Child {
    std::string name;
    pid_t pid = -1;
    absl::Time started;
    absl::Time respawn_at = absl::InfinitePast();
    absl::Duration backoff;
  };

  LocalWorkerSupervisor(const LocalWorkerOptions& options, metrics::SchedulerMetrics* metrics);
  absl::Status SpawnLocked(Child& child) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MonitorLoop();

  const LocalWorkerOptions options_;
  metrics::SchedulerMetrics* const metrics_;
  absl::Mutex mu_;
  std::vector<Child> children_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread monitor_;
};

}  // namespace wmserve::server

#endif  // WMSERVE_SERVER_LOCAL_WORKERS_H_
